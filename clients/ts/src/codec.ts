// The encoding rules of docs/PROTOCOL.md section 3 (bincode 2's `standard` configuration):
// varints for u16/u32/u64, one byte for u8 and bool, a tag byte for options, a u64 length
// before strings, byte strings and lists, a u32 variant index before an enum's fields.
// u64 values are bigints (ids, sequence numbers and times can pass 2^53); u8, u16 and u32
// are numbers.

/** A body that does not decode: the frame is invalid (section 2). */
export class DecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DecodeError";
  }
}

const U16_MAX = 0xffff;
const U32_MAX = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Appends encoded values to a growing buffer. */
export class Writer {
  private buf = new Uint8Array(64);
  private len = 0;

  /** The bytes written so far. */
  bytes(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.buf.subarray(0, this.len));
    this.buf = grown;
  }

  raw(bytes: Uint8Array): void {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }

  u8(value: number): void {
    if (!Number.isInteger(value) || value < 0 || value > 0xff) {
      throw new RangeError(`${value} is not a u8`);
    }
    this.reserve(1);
    this.buf[this.len++] = value;
  }

  /** A varint of at most `max` (the shortest form). */
  private varint(value: bigint, max: bigint): void {
    if (value < 0n || value > max) throw new RangeError(`${value} is out of range`);
    if (value <= 250n) {
      this.u8(Number(value));
      return;
    }
    const [marker, width] =
      value <= 0xffffn ? [0xfb, 2] : value <= 0xffff_ffffn ? [0xfc, 4] : [0xfd, 8];
    this.u8(marker);
    for (let i = 0; i < width; i++) {
      this.u8(Number((value >> BigInt(8 * i)) & 0xffn));
    }
  }

  u16(value: number): void {
    this.varint(BigInt(value), BigInt(U16_MAX));
  }

  u32(value: number): void {
    this.varint(BigInt(value), BigInt(U32_MAX));
  }

  u64(value: bigint): void {
    this.varint(value, U64_MAX);
  }

  bool(value: boolean): void {
    this.u8(value ? 1 : 0);
  }

  /** A length or a count: a u64 varint. */
  length(n: number): void {
    this.u64(BigInt(n));
  }

  string(value: string): void {
    const bytes = utf8.encode(value);
    this.length(bytes.length);
    this.raw(bytes);
  }

  byteString(value: Uint8Array): void {
    this.length(value.length);
    this.raw(value);
  }

  /** A fixed-size array (`[u8; N]`): the bytes, no length. */
  array(value: Uint8Array, size: number): void {
    if (value.length !== size) throw new RangeError(`expected ${size} bytes, got ${value.length}`);
    this.raw(value);
  }

  option<T>(value: T | null, each: (w: Writer, v: T) => void): void {
    if (value === null) {
      this.u8(0);
    } else {
      this.u8(1);
      each(this, value);
    }
  }

  vec<T>(values: readonly T[], each: (w: Writer, v: T) => void): void {
    this.length(values.length);
    for (const value of values) each(this, value);
  }

  /** An enum's variant index. */
  variant(index: number): void {
    this.u32(index);
  }
}

/** Reads encoded values from a body, which must be consumed exactly ([`Reader.end`]). */
export class Reader {
  private at = 0;

  constructor(private readonly buf: Uint8Array) {}

  /** Bytes not read yet. */
  remaining(): number {
    return this.buf.length - this.at;
  }

  /** The body is consumed exactly: bytes left over are an invalid frame. */
  end(): void {
    if (this.at !== this.buf.length) {
      throw new DecodeError(`${this.buf.length - this.at} bytes after the end of the value`);
    }
  }

  raw(n: number): Uint8Array {
    if (n > this.remaining()) throw new DecodeError("unexpected end of the body");
    const bytes = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return bytes;
  }

  u8(): number {
    if (this.at >= this.buf.length) throw new DecodeError("unexpected end of the body");
    return this.buf[this.at++] as number;
  }

  /** A varint whose type holds at most `bytes` bytes (2, 4 or 8). */
  private varint(bytes: number): bigint {
    const first = this.u8();
    if (first <= 250) return BigInt(first);
    const width = first === 0xfb ? 2 : first === 0xfc ? 4 : first === 0xfd ? 8 : 0;
    if (width === 0) throw new DecodeError(`invalid varint marker ${first.toString(16)}`);
    if (width > bytes) throw new DecodeError("varint wider than its type");
    const raw = this.raw(width);
    let value = 0n;
    for (let i = width - 1; i >= 0; i--) value = (value << 8n) | BigInt(raw[i] as number);
    return value;
  }

  u16(): number {
    return Number(this.varint(2));
  }

  u32(): number {
    return Number(this.varint(4));
  }

  u64(): bigint {
    return this.varint(8);
  }

  bool(): boolean {
    const b = this.u8();
    if (b > 1) throw new DecodeError(`invalid bool ${b}`);
    return b === 1;
  }

  /** A length or count, which cannot exceed what is left to read (each item is a byte at
   *  least), so a claimed length never allocates more than the body. */
  length(): number {
    const n = this.u64();
    if (n > BigInt(this.remaining())) throw new DecodeError("a length beyond the body");
    return Number(n);
  }

  string(): string {
    const bytes = this.raw(this.length());
    try {
      return strictUtf8.decode(bytes);
    } catch {
      throw new DecodeError("a string that is not UTF-8");
    }
  }

  byteString(): Uint8Array {
    return this.raw(this.length()).slice();
  }

  array(size: number): Uint8Array {
    return this.raw(size).slice();
  }

  option<T>(each: (r: Reader) => T): T | null {
    const tag = this.u8();
    if (tag === 0) return null;
    if (tag === 1) return each(this);
    throw new DecodeError(`invalid option tag ${tag}`);
  }

  vec<T>(each: (r: Reader) => T): T[] {
    const n = this.length();
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(each(this));
    return out;
  }

  variant(): number {
    return this.u32();
  }
}
