/**
 * chroot-guard: see chroot(2) on Linux as typed events, from eBPF programs
 * on the kernel's chroot path.
 *
 * @example
 * import { chrootWatch } from 'chroot-guard';
 * const sub = chrootWatch().subscribe((e) => console.log(e.comm, e.pid, e.path, '→', e.resolvedPath, e.errno ?? 'ok'));
 * @module
 */
export { chrootWatch, type ChrootWatchOptions } from './watch.js';
export { Flow } from './flow.js';
export { DEFAULT_PIN_DIR, DEFAULT_RING_BUFFER_BYTES } from './defaults.js';
export { type ChrootEvent, type ExecutablePath, type DecisionReason, errnoName, displayBytes } from './events.js';
export { containerOf, cgroupLookupFailure, CGROUP_CACHE_ENTRIES, type CgroupAttribution, type CgroupLookup, type ContainerAttribution, type ContainerRuntime } from './cgroup.js';
export { ChrootGuardError, CHROOT_GUARD_ERROR_CODES, type ChrootGuardErrorCode, type AttachMode, type Refusal } from './errors.js';
export type { AttachInfo, AttachedProgram, SessionStats } from './session.js';
export type { LossCounts, LostReport } from './batch.js';
export { toWallClock, boottimeNs } from './clock.js';
export { doctor, BLIND_SPOTS, type BlindSpot, type DoctorReport, type KernelFeature, type AttachPointReport, type Check, type Denial, type Mechanism, type ModeReport, type RememberedRefusals } from './doctor.js';
export { chrootedTasks, type ChrootedTask, type ChrootedTasksOptions, type PsResult, type PsSource } from './ps.js';
export { countStacks, type CountStacksOptions, type KernelStack, type StackFrame, type StackReport } from './stacks.js';
export { chrootGuard, type ChrootGuard, type ChrootGuardOptions, type ChrootDecision, type GuardInfo } from './guard.js';
export {
  pinnedGuard,
  updatePinnedGuard,
  unloadPinnedGuard,
  pinLeftovers,
  followPinnedGuard,
  type FollowOptions,
  type PinOptions,
  type PinnedGuardStatus,
  type PinnedGuardUnload,
} from './pinned.js';
export { parsePolicy, loadPolicy, validatePolicy, policyWarnings, hostWarnings, policySchema, type LoadPolicyOptions } from './policy/validate.js';
export { evaluatePolicy, policyContext, INITIAL_USER_NS, type PolicyContext, type FileIdentity, type Evaluation, type CallerFacts } from './policy/evaluate.js';
export { readRecording, lsmDecides, type RecordingItem, type RecordingSource, type ReadRecordingOptions } from './recording.js';
export { replayPolicy, replayContext, type ReplayContext, type ReplayOptions, type ReplaySummary, type RuleCount } from './policy/replay.js';
export { learnPolicy, mergeRoots, MIN_MERGE_DEPTH, type LearnOptions, type LearnedPolicy, type MergedRoot, type NotLearned } from './policy/learn.js';
export {
  pathBytes,
  formatProblem,
  PolicyError,
  DocumentError,
  UnsafePolicyFileError,
  MAX_RULES,
  MAX_PATHS,
  MAX_EXES,
  MAX_PATH_BYTES,
  MAX_COMM_BYTES,
  MAX_RULE_ID_BYTES,
  MAX_POLICY_BYTES,
  MAX_POLICY_DEPTH,
  MAX_ALIASES,
  MAX_ALIAS_VALUES,
  type Policy,
  type PolicyRule,
  type PolicyMatch,
  type PolicyConditions,
  type PolicyAction,
  type PolicyProblem,
} from './policy/types.js';
