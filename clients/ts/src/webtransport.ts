// WebTransport to chatd in a browser (docs/PROTOCOL.md section 1): where the endpoint is and
// which certificate hash to trust come from the daemon's `/webtransport.json`, fetched again
// before every connection (the development certificate for browsers rotates).

import type { Connector, Transport } from "./session.js";

/** What `/webtransport.json` says. */
export interface Endpoint {
  webtransport: boolean;
  /** `null` when the daemon listens on a wildcard address: use the page's host. */
  url: string | null;
  port: number;
  path: string;
  serverCertificateHashes: { algorithm: string; value: string }[];
  validUntil: number | null;
}

/** The endpoint's URL, from `endpoint` and, without one of its own, the page's host. */
export function endpointUrl(endpoint: Endpoint, pageHost: string): string {
  return endpoint.url ?? `https://${pageHost}:${endpoint.port}${endpoint.path}`;
}

function bytes(base64: string): Uint8Array<ArrayBuffer> {
  const text = atob(base64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/** Connects over WebTransport to the daemon that `config` (its `/webtransport.json`)
 *  describes; the session stream is the session's first bidirectional stream. */
export function webTransport(config: string | URL = "/webtransport.json"): Connector {
  return async (): Promise<Transport> => {
    const response = await fetch(config, { cache: "no-store" });
    if (!response.ok) throw new Error(`${config}: HTTP ${response.status}`);
    const endpoint = (await response.json()) as Endpoint;
    if (!endpoint.webtransport) throw new Error("this daemon takes no WebTransport sessions");
    if (typeof WebTransport === "undefined") throw new Error("this browser has no WebTransport");
    const serverCertificateHashes = endpoint.serverCertificateHashes.map((h) => ({
      algorithm: h.algorithm,
      value: bytes(h.value),
    }));
    const session = new WebTransport(
      endpointUrl(endpoint, location.hostname),
      serverCertificateHashes.length > 0 ? { serverCertificateHashes } : {},
    );
    // `closed` rejects when the connection fails; the stream reads report it too.
    session.closed.catch(() => {});
    await session.ready;
    const stream = await session.createBidirectionalStream();
    return {
      readable: stream.readable as ReadableStream<Uint8Array>,
      writable: stream.writable as WritableStream<Uint8Array>,
      datagrams: {
        readable: session.datagrams.readable as ReadableStream<Uint8Array>,
        writable: session.datagrams.writable as WritableStream<Uint8Array>,
      },
      close: (code, reason) => session.close({ closeCode: code, reason }),
    };
  };
}
