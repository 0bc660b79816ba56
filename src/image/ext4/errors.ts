import { IbuError } from '../../errors.js';

/** The one error the reader raises for anything malformed in an image. */
export function invalid(message: string, cause?: unknown): IbuError {
  return new IbuError('IMAGE_INVALID', message, cause === undefined ? undefined : { cause });
}
