import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { baseSpec, makeTree, tmpDir } from './build-fixtures.js';

const work = tmpDir('build-cli');
after(() => fs.rmSync(work, { recursive: true, force: true }));
const cli = fileURLToPath(new URL('../../src/cli/ibu.js', import.meta.url));

/** Runs `ibu ARGS` in a child process (with the same loader flags when run under tsx). */
function ibu(args: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(
    process.execPath,
    [...process.execArgv, '--input-type=module', '-e', `import(${JSON.stringify(cli)}).then((m) => m.main(process.argv.slice(1)))`, ...args],
    {
      encoding: 'utf8',
      env: { ...process.env, ...env },
    },
  );
  return { code: r.status ?? 128, stdout: r.stdout, stderr: r.stderr };
}

test('ibu image build --json prints the result; errors map to codes and exit statuses', () => {
  const tree = path.join(work, 'tree');
  makeTree(tree, baseSpec());
  const out = path.join(work, 'out.img');
  const ok = ibu(['image', 'build', '--root', tree, '--version', '3.1.4', '--size', '64M', '--product', 'cli-test', '--out', out, '--json']);
  assert.equal(ok.code, 0, ok.stderr);
  const res = JSON.parse(ok.stdout);
  assert.equal(res.path, out);
  assert.equal(res.version, '3.1.4');
  assert.equal(res.size, 64 * 1024 * 1024);
  assert.equal(res.layout, 'fresh');
  assert.match(res.sha256, /^[0-9a-f]{64}$/);
  assert.equal(res.allocatedBytes, fs.statSync(out).blocks * 512);

  const human = ibu(['image', 'build', '--root', tree, '--version', '3.1.4', '--size', '64M', '--product', 'cli-test', '--out', path.join(work, 'h.img')]);
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, new RegExp(`sha256 ${res.sha256}`));

  fs.rmSync(path.join(tree, 'vmlinuz'));
  const noKernel = ibu(['image', 'build', '--root', tree, '--version', '3.1.5', '--size', '64M', '--out', path.join(work, 'k.img')]);
  assert.equal(noKernel.code, 3);
  assert.match(noKernel.stderr, /error\[IMAGE_NO_KERNEL\]: .*--no-kernel/);

  fs.writeFileSync(path.join(tree, 'var/blob'), Buffer.alloc(20 * 1024 * 1024, 1));
  const tooSmall = ibu(['image', 'build', '--root', tree, '--no-kernel', '--version', '3.1.5', '--size', '16M', '--out', path.join(work, 's.img'), '--json']);
  assert.equal(tooSmall.code, 6);
  assert.equal(JSON.parse(tooSmall.stdout).error.code, 'IMAGE_TOO_SMALL');
  assert.match(tooSmall.stderr, /short by about/);
  fs.rmSync(path.join(tree, 'var/blob'));
  const badVersion = ibu(['image', 'build', '--root', tree, '--version', 'latest', '--size', '64M', '--out', path.join(work, 'v.img')]);
  assert.equal(badVersion.code, 2);
  assert.match(badVersion.stderr, /VERSION_INVALID/);

  const nonRoot = ibu(
    [
      'image',
      'build',
      '--root',
      tree,
      '--no-kernel',
      '--version',
      '3.1.6',
      '--size',
      '64M',
      '--product',
      'cli-test',
      '--previous',
      out,
      '--out',
      path.join(work, 'p.img'),
    ],
    { IBU_ASSUME_NON_ROOT: '1' },
  );
  assert.equal(nonRoot.code, 0, nonRoot.stderr);
  assert.match(nonRoot.stderr, /^warning: --previous needs root/m);
});
