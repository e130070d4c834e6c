/**
 * Byte-level UTF-8 checks shared by policy reading
 * (`ts/policy/validate.ts`: where the first bad byte of a file is) and the
 * CLI's terminal escaping (`ts/cli/output.ts`: which bytes form a character
 * and which do not).
 * @internal
 * @module
 */

/**
 * Length (1 to 4) of the well-formed UTF-8 sequence that starts at
 * `bytes[i]`, or 0 when none does: a stray continuation byte, an overlong
 * form, a surrogate, a code point above U+10FFFF, or a sequence cut short.
 * Exactly the well-formed sequences of the Unicode Standard, Table 3-7,
 * which is what `new TextDecoder('utf-8', { fatal: true })` accepts.
 */
export function utf8SequenceLength(bytes: Uint8Array, i: number): number {
  const b0 = bytes[i]!;
  if (b0 < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf) => i + k < bytes.length && bytes[i + k]! >= lo && bytes[i + k]! <= hi;
  if (b0 >= 0xc2 && b0 <= 0xdf) return cont(1) ? 2 : 0;
  if (b0 >= 0xe0 && b0 <= 0xef) {
    // E0: no overlongs (A0..BF); ED: no surrogates (80..9F).
    const [lo, hi] = b0 === 0xe0 ? [0xa0, 0xbf] : b0 === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (b0 >= 0xf0 && b0 <= 0xf4) {
    // F0: no overlongs (90..BF); F4: nothing above U+10FFFF (80..8F).
    const [lo, hi] = b0 === 0xf0 ? [0x90, 0xbf] : b0 === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

/** Offset of the first byte that does not start a well-formed UTF-8 sequence, or -1 when all of `bytes` is UTF-8. */
export function firstInvalidUtf8(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length; ) {
    const n = utf8SequenceLength(bytes, i);
    if (n === 0) return i;
    i += n;
  }
  return -1;
}
