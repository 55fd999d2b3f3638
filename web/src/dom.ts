// The few DOM and value helpers the app needs (no framework).

type Child = Node | string;
type Attributes = Record<string, string | ((event: never) => void)>;

/** An element with attributes (`onclick`-style keys become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (typeof value === "function") {
      element.addEventListener(key.slice(2), value as EventListener);
    } else if (value !== "") {
      element.setAttribute(key, value);
    }
  }
  element.append(...children);
  return element;
}

/** The element `selector` names; it must exist. */
export function $(selector: string): HTMLElement {
  const element = document.querySelector<HTMLElement>(selector);
  if (!element) throw new Error(`no element ${selector}`);
  return element;
}

/** Empties `element`; returns it. */
export function clear<T extends HTMLElement>(element: T): T {
  element.replaceChildren();
  return element;
}

/** A random u64 (op ids, device ids). */
export function randomU64(): bigint {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return (BigInt(words[0] as number) << 32n) | BigInt(words[1] as number);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function fromText(text: string): Uint8Array {
  return encoder.encode(text);
}

export function toText(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/** Bytes as lowercase hex. */
export function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A timestamp (milliseconds since the epoch) as the time of day. */
export function time(ts: bigint): string {
  return new Date(Number(ts)).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}
