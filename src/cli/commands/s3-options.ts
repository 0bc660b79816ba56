import type { Command } from 'commander';
import type { S3StoreOptions } from '../../store/s3-store.js';

/** The S3 flags of every command that takes a store (`s3://bucket/prefix`); credentials come from the AWS environment. */
export function addS3Options(cmd: Command): Command {
  return cmd
    .option('--s3-endpoint <url>', 'S3 endpoint for s3:// stores (radosgw, MinIO; default AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)')
    .option('--s3-region <region>', 'S3 region (default AWS_REGION, else us-east-1)')
    .option('--s3-virtual-hosted', 'address buckets as bucket.host (default with --s3-endpoint: path style, host/bucket, as radosgw wants)');
}

export interface S3Flags {
  s3Endpoint?: string;
  s3Region?: string;
  s3VirtualHosted?: boolean;
}

export function s3OptionsFromFlags(o: S3Flags): S3StoreOptions {
  return {
    endpoint: o.s3Endpoint,
    region: o.s3Region,
    forcePathStyle: o.s3VirtualHosted ? false : undefined,
  };
}
