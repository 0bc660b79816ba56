import type { Bootloader, BootloaderInfo, BootState, WriteResult } from '../boot/bootloader.js';
import { checkpointFilesystem } from './checkpoint.js';

/**
 * A bootloader whose every write is visible to GRUB before it returns: when a write created a
 * file (rather than rewriting one in place), the filesystem is checkpointed (checkpoint.ts says
 * why). The agent only ever writes the boot environment through this wrapper.
 */
export class CheckpointedBootloader implements Bootloader {
  constructor(
    private readonly inner: Bootloader,
    private readonly mode: 'fsfreeze' | 'sync',
  ) {}

  get info(): BootloaderInfo {
    return this.inner.info;
  }
  read(): Promise<BootState> {
    return this.inner.read();
  }
  setTry(version: string): Promise<WriteResult> {
    return this.checkpointed(this.inner.setTry(version));
  }
  clearTry(): Promise<WriteResult> {
    return this.checkpointed(this.inner.clearTry());
  }
  commit(version: string): Promise<WriteResult> {
    return this.checkpointed(this.inner.commit(version));
  }
  init(version: string): Promise<WriteResult> {
    return this.checkpointed(this.inner.init(version));
  }
  markGood(version: string): Promise<WriteResult> {
    return this.checkpointed(this.inner.markGood(version));
  }

  private async checkpointed(write: Promise<WriteResult>): Promise<WriteResult> {
    const w = await write;
    if (w.created) await checkpointFilesystem(this.inner.info.dir, this.mode);
    return w;
  }
}
