import { IbuError } from '../errors.js';

/** The two ways a delta file can be bad; every reader of delta bytes reports through these. */

export function deltaInvalid(path: string, why: string): IbuError {
  return new IbuError('DELTA_INVALID', `The delta ${path} is corrupt (${why}); download or build it again.`);
}

export function deltaTruncated(path: string, have: number, want: number): IbuError {
  return new IbuError('DELTA_TRUNCATED', `The delta ${path} is truncated: it has ${have} bytes but its header says ${want}; resume or repeat the download.`, {
    details: { have, want },
  });
}
