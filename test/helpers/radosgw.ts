import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { repoRoot } from './repo-root.js';
import { promisify } from 'node:util';
import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, PutBucketPolicyCommand, S3Client } from '@aws-sdk/client-s3';
import type { S3StoreOptions } from '../../src/store/s3-store.js';

const repo = repoRoot();

export interface Radosgw {
  endpoint: string;
  options: S3StoreOptions;
  /** The same settings as the AWS environment variables a child `ibu` reads. */
  env: Record<string, string>;
}

/**
 * The shared real radosgw (scripts/radosgw.sh start: idempotent, ~5 s the first time). Returns a
 * reason to skip when it cannot run here (not root); anywhere else a failure to start fails the test.
 */
export async function radosgw(): Promise<Radosgw | string> {
  if (process.getuid?.() !== 0) return 'radosgw needs root (scripts/radosgw.sh installs and starts Ceph daemons)';
  const { stdout } = await promisify(execFile)('bash', [path.join(repo, 'scripts/radosgw.sh'), 'start'], { timeout: 240_000 });
  const v = Object.fromEntries(
    stdout
      .trim()
      .split('\n')
      .map((l) => l.split('=', 2) as [string, string]),
  );
  const options: S3StoreOptions = {
    endpoint: v.S3_ENDPOINT!,
    region: v.S3_REGION!,
    forcePathStyle: true,
    accessKeyId: v.S3_ACCESS_KEY!,
    secretAccessKey: v.S3_SECRET_KEY!,
  };
  const env = {
    AWS_ENDPOINT_URL_S3: options.endpoint!,
    AWS_REGION: options.region!,
    AWS_ACCESS_KEY_ID: options.accessKeyId!,
    AWS_SECRET_ACCESS_KEY: options.secretAccessKey!,
    IBU_S3_PATH_STYLE: '1',
  };
  return { endpoint: options.endpoint!, options, env };
}

function client(gw: Radosgw): S3Client {
  const o = gw.options;
  return new S3Client({
    endpoint: o.endpoint,
    region: o.region,
    forcePathStyle: true,
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    credentials: { accessKeyId: o.accessKeyId!, secretAccessKey: o.secretAccessKey! },
  });
}

/** A new bucket with a unique name; `publicRead` lets anonymous GETs read it (a CDN origin). */
export async function newBucket(gw: Radosgw, tag: string, o: { publicRead?: boolean } = {}): Promise<string> {
  const name = `ibu-${tag}-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  const s3 = client(gw);
  try {
    await s3.send(new CreateBucketCommand({ Bucket: name }));
    if (o.publicRead) {
      const policy = {
        Version: '2012-10-17',
        Statement: [{ Effect: 'Allow', Principal: '*', Action: ['s3:GetObject'], Resource: [`arn:aws:s3:::${name}/*`] }],
      };
      await s3.send(new PutBucketPolicyCommand({ Bucket: name, Policy: JSON.stringify(policy) }));
    }
  } finally {
    s3.destroy();
  }
  return name;
}

/** Deletes every object of the bucket and the bucket (memstore keeps objects in RAM). */
export async function dropBucket(gw: Radosgw, bucket: string): Promise<void> {
  const s3 = client(gw);
  try {
    for (;;) {
      const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
      const keys = (page.Contents ?? []).map((c) => ({ Key: c.Key! }));
      if (keys.length === 0) break;
      await s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
    }
    await s3.send(new DeleteBucketCommand({ Bucket: bucket }));
  } finally {
    s3.destroy();
  }
}

/**
 * A test that needs radosgw and cannot have it: skipped in a run by hand (no root, no packages), a
 * failure in CI, which runs as root after scripts/install-deps.sh and must run it.
 */
export function noS3(t: { skip: (why: string) => void }, why: string): void {
  if (process.env.CI) throw new Error(`radosgw is required in CI: ${why}`);
  t.skip(why);
}
