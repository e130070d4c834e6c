/**
 * Defaults the library and the CLI share, in a module with no imports: the
 * CLI names them in its help without loading what uses them.
 * @module
 */

/** Default ring buffer size: 4 MiB (bytes), room for about 500 events. */
export const DEFAULT_RING_BUFFER_BYTES = 4 << 20;

/** Where guards are pinned unless told otherwise. */
export const DEFAULT_PIN_DIR = '/sys/fs/bpf/chroot-guard';
