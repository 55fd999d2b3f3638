// The error and goodbye codes of docs/PROTOCOL.md sections 9 and 10 (stable: never
// renumbered or reused). test/codes.test.ts checks them against the document's tables.

/** `ErrorBody.code` (section 9): a number, with the known ones named here. */
export type ErrorCode = number;
export const ErrorCode = {
  MALFORMED_FRAME: 100,
  FRAME_TOO_LARGE: 101,
  UNSUPPORTED_VERSION: 102,
  UNEXPECTED_FRAME: 103,
  NOT_AUTHENTICATED: 104,
  ALREADY_AUTHENTICATED: 105,
  AUTH_TIMEOUT: 106,
  WRONG_PASSWORD: 200,
  UNKNOWN_USER: 201,
  TOKEN_EXPIRED: 202,
  TOKEN_INVALID: 203,
  TOKEN_UNKNOWN_KEY: 204,
  TOKEN_MALFORMED: 205,
  USERNAME_TAKEN: 206,
  INVALID_USERNAME: 207,
  INVALID_PASSWORD: 208,
  ACCOUNT_DISABLED: 209,
  TOKEN_REVOKED: 210,
  NOT_MEMBER: 300,
  FORBIDDEN: 301,
  BANNED: 302,
  INVITE_REQUIRED: 303,
  ROOM_NAME_TAKEN: 304,
  UNKNOWN_ROOM: 305,
  UNKNOWN_CONVERSATION: 306,
  ALREADY_MEMBER: 307,
  TOO_MANY_ROOMS: 308,
  ROOM_FULL: 309,
  INVALID_ROOM_NAME: 310,
  NOT_AUTHOR: 311,
  INVALID_REQUEST: 400,
  BODY_TOO_LARGE: 401,
  INVALID_CONTENT: 402,
  UNKNOWN_MESSAGE: 403,
  MESSAGE_DELETED: 404,
  ALREADY_REACTED: 405,
  NOT_REACTED: 406,
  INVALID_REACTION: 407,
  INVALID_MENTION: 408,
  RATE_LIMITED: 500,
  TOO_MANY_IN_FLIGHT: 501,
  OVERLOADED: 502,
  TOO_MANY_EDITS: 503,
  TOO_MANY_REACTIONS: 504,
  INTERNAL: 900,
  UNAVAILABLE: 901,
} as const;

/** `Goodbye.code`, also the QUIC (or WebTransport) close code (section 10). */
export type GoodbyeCode = number;
export const GoodbyeCode = {
  NORMAL: 0,
  SHUTTING_DOWN: 1,
  IDLE_TIMEOUT: 2,
  AUTH_TIMEOUT: 3,
  PROTOCOL_VIOLATION: 4,
  REPLACED: 5,
  TOKEN_EXPIRED: 6,
  UNSUPPORTED_VERSION: 7,
  OVERLOADED: 8,
  KICKED: 9,
  ACCOUNT_DISABLED: 10,
  TOKEN_REVOKED: 11,
} as const;

/** The name of an error code, or its class by its hundred for an unknown one (section 9). */
export function errorName(code: number): string {
  for (const [name, value] of Object.entries(ErrorCode)) if (value === code) return name;
  const classes: Record<number, string> = { 1: "protocol", 2: "authentication", 3: "rights", 4: "request", 5: "limits", 9: "server" };
  return `${classes[Math.floor(code / 100)] ?? "unknown"} error ${code}`;
}
