import type { DeltaOp, Range } from './types.js';

/** The target bytes an op writes, as the plan, the validator, apply and `delta info` see them. */

/** The lowest target byte an op writes: ops are ordered by it (a file's ranges follow its logical order, not the disk's). */
export function opStart(op: DeltaOp): number {
  if (op.type === 'zero' || op.type === 'copy') return op.dst;
  let m = Infinity;
  for (const r of op.dst) if (r.offset < m) m = r.offset;
  return m;
}

export function rangesBytes(rs: Range[]): number {
  let n = 0;
  for (const r of rs) n += r.length;
  return n;
}

/** How many target bytes an op writes. */
export function opTargetBytes(op: DeltaOp): number {
  return op.type === 'zero' || op.type === 'copy' ? op.length : rangesBytes(op.dst);
}
