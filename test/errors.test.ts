/**
 * One failure shape across the native boundary: the codes the loader can
 * send (`Code::ALL` in crates/loader/src/error.rs, through `errorCodes()`)
 * are the documented ones, and a code outside them still makes a
 * documented error. Host-only: no kernel, no privileges.
 */
import { describe, expect, it } from 'vitest';
import { ATTACH_MODES, CHROOT_GUARD_ERROR_CODES, ChrootGuardError, errorFromBinding, MODE_CHOICES, TS_ONLY_ERROR_CODES } from '../ts/errors.js';
import { native } from '../ts/native.js';

describe('error codes across the native boundary', () => {
  it('the loader sends exactly the documented codes TypeScript does not raise itself', () => {
    const rust = native().errorCodes();
    expect(new Set(rust).size).toBe(rust.length);
    const fromLoader = CHROOT_GUARD_ERROR_CODES.filter((c) => !TS_ONLY_ERROR_CODES.includes(c));
    expect([...rust].sort()).toEqual([...fromLoader].sort());
    for (const c of TS_ONLY_ERROR_CODES) expect(CHROOT_GUARD_ERROR_CODES).toContain(c);
  });

  it('the attach modes are the loader\'s (Mode::ALL through attachModes()), in the order auto tries them', () => {
    expect([...ATTACH_MODES]).toEqual(native().attachModes());
    expect(MODE_CHOICES).toEqual(['auto', ...ATTACH_MODES]);
    // The event layout numbers every mode, and nothing else is a mode.
    const layout = native().eventLayout();
    expect(Object.keys(layout).filter((k) => k.startsWith('mode_')).sort()).toEqual(ATTACH_MODES.map((m) => `mode_${m}`).sort());
  });

  it('a failure of the loader becomes its error, with its verifier log and the extra fields', () => {
    const refusals = [{ mode: 'kprobe', program: 'p', target: 't', stage: 'load', code: 'VERIFIER', errno: null, reason: 'r', remembered: false }] as const;
    const e = errorFromBinding({ code: 'LOAD_FAILED', message: 'the verifier said no', verifierLog: 'log' }, { refusals });
    expect(e).toBeInstanceOf(ChrootGuardError);
    expect(e.code).toBe('LOAD_FAILED');
    expect(e.message).toMatch(/^the verifier said no \(LOAD_FAILED\): /);
    expect(e.verifierLog).toBe('log');
    expect(e.refusals).toEqual(refusals);
  });

  it('an unknown code becomes INTERNAL, the code kept in the message', () => {
    const e = errorFromBinding({ code: 'CLOSED', message: 'the session was closed while it was opening' });
    expect(e.code).toBe('INTERNAL');
    expect(e.message).toContain('the session was closed while it was opening');
    expect(e.message).toContain('"CLOSED"');
    expect(e.message).toContain('this is a bug in chroot-guard');
    expect(e.message).not.toContain('undefined');
    expect(e.verifierLog).toBeUndefined();
  });

  it('a failure from a real call of the addon (a policy the compiler refuses) has a documented code', () => {
    const r = native().policyContext(JSON.stringify({ mode: 'enforce', rules: [{ id: 'x', action: 'deny', match: { exe: '/nonexistent/chroot-guard-test' } }] }));
    expect(r.failure).toBeTruthy();
    const e = errorFromBinding(r.failure!);
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toContain('/nonexistent/chroot-guard-test');
  });
});
