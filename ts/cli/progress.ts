/**
 * A progress line on stderr for commands that read a long input (`replay`,
 * `learn`): bytes read (of the total, when the input is a file), records
 * per second, redrawn four times a second in place and cleared at the end;
 * nothing at all when stderr is not a terminal. Written here rather than
 * taken from a progress-bar package: one line of text needs no dependency,
 * and the total is unknown for a pipe, which bar packages assume.
 * @internal
 * @module
 */
import { fstatSync, statSync } from 'node:fs';

/** How often the line is redrawn, in ms. */
const EVERY_MS = 250;

const MIB = 1024 * 1024;
/** Bytes as MiB (one decimal below 10) or GiB (two decimals from 1 GiB). */
const size = (n: number) => (n >= 1024 * MIB ? `${(n / MIB / 1024).toFixed(2)} GiB` : `${(n / MIB).toFixed(n >= 10 * MIB ? 0 : 1)} MiB`);

/** The size of a regular file at `source` (`-`: stdin when it is one), or undefined. */
export function inputSize(source: string): number | undefined {
  try {
    const st = source === '-' ? fstatSync(0) : statSync(source);
    return st.isFile() ? st.size : undefined;
  } catch {
    return undefined;
  }
}

/** Progress of one read; call {@link Progress.done} at the end (it clears the line). */
export class Progress {
  private bytes = 0;
  private records = 0;
  private readonly started = Date.now();
  private readonly timer: NodeJS.Timeout | undefined;
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly total: number | undefined,
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {
    if (out.isTTY) {
      this.timer = setInterval(() => this.draw(), EVERY_MS);
      this.timer.unref();
    }
  }

  /** `n` more bytes read. */
  readonly addBytes = (n: number): void => {
    this.bytes += n;
  };

  /** One more record. */
  readonly record = (): void => {
    this.records++;
  };

  private draw(): void {
    const s = Math.max((Date.now() - this.started) / 1000, 0.001);
    const pct = this.total ? ` (${Math.min(100, (100 * this.bytes) / this.total).toFixed(0)}%)` : '';
    const of = this.total !== undefined ? ` of ${size(this.total)}` : '';
    this.out.write(`\r\x1b[K${this.label}: ${size(this.bytes)}${of}${pct}, ${this.records.toLocaleString('en-US')} records, ${Math.round(this.records / s).toLocaleString('en-US')}/s`);
    this.drawn = true;
  }

  /** Stops redrawing and clears the line. */
  done(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.drawn) this.out.write('\r\x1b[K');
  }
}
