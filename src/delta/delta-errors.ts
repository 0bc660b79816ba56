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

/** The error when an image (`what`) ends before the delta's source would. */
export function sourceShort(what: string): (at: number) => IbuError {
  return (at) => new IbuError('DELTA_WRONG_SOURCE', `${what} ended at byte ${at}; it is shorter than the delta's source image.`);
}
