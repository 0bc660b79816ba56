/**
 * Issue #15 item 1: a device id cannot be taken over. Enrollment binds the id to the device's own
 * ed25519 key; enrolling an enrolled id again needs that key (or an admin's reset); per-device
 * factory secrets work once; re-enrolling never moves a device; unknown ids and bad credentials
 * get one answer. Runs on SQLite and on a real PostgreSQL server; a fake clock drives time.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Fleet, hashToken } from '../../src/fleet/fleet.js';
import { createPublicKey } from 'node:crypto';
import { devicePublicKey, newDeviceKey, signEnrollment, verifyEnrollment, ENROLL_PROOF_WINDOW_MS } from '../../src/fleet/device-proof.js';
import type { FleetRepository } from '../../src/fleet/repository.js';
import { IbuError, isIbuError } from '../../src/errors.js';
import { BACKENDS } from './backends.js';

const idle = { version: '1', state: 'idle', trial: false } as const;

/** The error a promise rejects with (code and message), to compare refusals with each other. */
async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof IbuError, String(e));
    return { code: e.code, message: e.message };
  }
  assert.fail('expected a refusal');
}

test('a new device key: ed25519 from 32 random bytes, a different key each time, and its proofs verify', () => {
  const keys = Array.from({ length: 20 }, () => newDeviceKey());
  for (const k of keys) {
    assert.equal(k.type, 'private');
    assert.equal(k.asymmetricKeyType, 'ed25519');
    const x = devicePublicKey(k);
    // OpenSSL derives the same public key from the PKCS#8 seed as from the key itself
    assert.equal(x, createPublicKey(k.export({ format: 'pem', type: 'pkcs8' })).export({ format: 'jwk' }).x);
    assert.ok(verifyEnrollment(signEnrollment(k, { deviceId: 'dev-1', enrollmentSecret: 's' })));
  }
  assert.equal(new Set(keys.map(devicePublicKey)).size, keys.length);
});

for (const backend of BACKENDS) {
  describe(`device identity on ${backend.name}`, { skip: backend.skip }, () => {
    let repo: FleetRepository;
    let cleanup: () => Promise<void>;
    let svc: Fleet;
    let now = Date.UTC(2026, 11, 4, 12, 0, 0);
    const real = newDeviceKey();
    const thief = newDeviceKey();
    let realToken = '';

    before(async () => {
      ({ repo, cleanup } = await backend.make());
      svc = new Fleet(repo, { enrollmentSecretHash: hashToken('fleet-secret') }, undefined, () => now);
      await svc.start();
    });
    after(async () => {
      await svc?.close().catch(() => {});
      await cleanup?.();
    });

    test('a pre-authorized id, once enrolled, cannot be enrolled again by anyone else', async () => {
      await svc.preauthorize(['box-1'], 'lab', 'beta');
      realToken = (await svc.enroll(signEnrollment(real, { deviceId: 'box-1' }, now))).token;
      now += 1000;
      // Before keys: this second enrollment succeeded, issued a new token and locked the real device out.
      await assert.rejects(svc.enroll(signEnrollment(thief, { deviceId: 'box-1' }, now)), (e) => isIbuError(e, 'UNAUTHORIZED'));
      // Not with the fleet secret either, and the request cannot move the device.
      await assert.rejects(
        svc.enroll(signEnrollment(thief, { deviceId: 'box-1', enrollmentSecret: 'fleet-secret', group: 'default', channel: 'stable' }, now)),
        (e) => isIbuError(e, 'UNAUTHORIZED'),
      );
      await svc.checkin('box-1', realToken, idle);
      const d = (await repo.getDevice('box-1'))!;
      assert.deepEqual([d.group, d.channel], ['lab', 'beta']);
    });

    test('the holder of the key re-enrolls without a secret: a new token, the old one dead, group and channel kept', async () => {
      now += 1000;
      const again = await svc.enroll(signEnrollment(real, { deviceId: 'box-1', enrollmentSecret: 'fleet-secret', group: 'x', channel: 'y' }, now));
      assert.notEqual(again.token, realToken);
      await assert.rejects(svc.checkin('box-1', realToken, idle), (e) => isIbuError(e, 'UNAUTHORIZED'));
      realToken = again.token;
      await svc.checkin('box-1', realToken, idle);
      const d = (await repo.getDevice('box-1'))!;
      assert.deepEqual([d.group, d.channel, d.checkins], ['lab', 'beta', 2], 'history, group and channel survive');
    });

    test('a captured enrollment cannot be replayed, and a proof far from the server clock is refused', async () => {
      now += 1000;
      const req = signEnrollment(real, { deviceId: 'box-1' }, now);
      realToken = (await svc.enroll(req)).token;
      await assert.rejects(svc.enroll(req), (e) => isIbuError(e, 'UNAUTHORIZED'), 'the same request again');
      await assert.rejects(svc.enroll(signEnrollment(real, { deviceId: 'box-1' }, now - 500)), (e) => isIbuError(e, 'UNAUTHORIZED'), 'an older proof');
      const late = signEnrollment(real, { deviceId: 'box-1' }, now + ENROLL_PROOF_WINDOW_MS + 60_000);
      await assert.rejects(svc.enroll(late), (e) => isIbuError(e, 'UNAUTHORIZED'), 'a proof from the future');
      // A signature made by another key over the real key's request is no proof.
      const forged = { ...signEnrollment(real, { deviceId: 'box-1' }, now + 1), proof: signEnrollment(thief, { deviceId: 'box-1' }, now + 1).proof };
      await assert.rejects(svc.enroll(forged), (e) => isIbuError(e, 'UNAUTHORIZED'));
      await svc.checkin('box-1', realToken, idle);
    });

    test('per-device factory secrets: only the right one, only once, and the fleet secret cannot claim the id', async () => {
      const added = await svc.importFactorySecrets([{ id: 'fac-1', secretHash: hashToken('s-1') }], 'plant', 'stable');
      assert.equal(added, 1);
      await assert.rejects(svc.enroll(signEnrollment(thief, { deviceId: 'fac-1', enrollmentSecret: 'fleet-secret' }, now)), (e) =>
        isIbuError(e, 'UNAUTHORIZED'),
      );
      await assert.rejects(svc.enroll(signEnrollment(thief, { deviceId: 'fac-1', enrollmentSecret: 's-2' }, now)), (e) => isIbuError(e, 'UNAUTHORIZED'));
      const dev = newDeviceKey();
      const { token } = await svc.enroll(signEnrollment(dev, { deviceId: 'fac-1', enrollmentSecret: 's-1' }, now));
      await svc.checkin('fac-1', token, idle);
      assert.equal((await repo.getDevice('fac-1'))!.group, 'plant');
      // The secret is spent: after an admin reset it no longer enrolls anyone.
      await svc.resetIdentity('fac-1');
      await assert.rejects(svc.enroll(signEnrollment(thief, { deviceId: 'fac-1', enrollmentSecret: 's-1' }, now + 1)), (e) => isIbuError(e, 'UNAUTHORIZED'));
      // The vendor imports a new secret for it: that one works once.
      await svc.importFactorySecrets([{ id: 'fac-1', secretHash: hashToken('s-1b') }], 'plant', 'stable');
      const fresh = newDeviceKey();
      await svc.enroll(signEnrollment(fresh, { deviceId: 'fac-1', enrollmentSecret: 's-1b' }, now + 2));
    });

    test('two enrollments racing for one factory secret: exactly one wins', async () => {
      await svc.importFactorySecrets([{ id: 'fac-2', secretHash: hashToken('s-2') }], 'plant', 'stable');
      const results = await Promise.allSettled(
        [newDeviceKey(), newDeviceKey(), newDeviceKey()].map((k) => svc.enroll(signEnrollment(k, { deviceId: 'fac-2', enrollmentSecret: 's-2' }, now))),
      );
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    });

    test("an admin's reset revokes the token and lets the device enroll with a new key, in its place", async () => {
      const view = await svc.resetIdentity('box-1');
      assert.equal(view.publicKey, null);
      await assert.rejects(svc.checkin('box-1', realToken, idle), (e) => isIbuError(e, 'UNAUTHORIZED'));
      const replaced = newDeviceKey(); // e.g. the device's disk was replaced
      now += 1000;
      const { token } = await svc.enroll(signEnrollment(replaced, { deviceId: 'box-1', group: 'default' }, now)); // still pre-authorized
      await svc.checkin('box-1', token, idle);
      const d = (await repo.getDevice('box-1'))!;
      assert.deepEqual([d.group, d.channel], ['lab', 'beta']);
      now += 1000;
      await assert.rejects(
        svc.enroll(signEnrollment(real, { deviceId: 'box-1' }, now)),
        (e) => isIbuError(e, 'UNAUTHORIZED'),
        'the old key is no longer bound',
      );
    });

    test('a device enrolled before keys binds one only with its current token', async () => {
      const legacyToken = 'legacy-token-0123456789';
      const old = (await repo.getDevice('box-1'))!;
      await repo.writeBatch([
        {
          kind: 'device',
          device: { ...old, id: 'old-1', tokenHash: hashToken(legacyToken), publicKey: null, keyProofAt: null, participation: undefined } as never,
        },
      ]);
      await svc.preauthorize(['old-1'], 'lab', 'beta');
      now += 1000;
      await assert.rejects(svc.enroll(signEnrollment(thief, { deviceId: 'old-1' }, now)), (e) => isIbuError(e, 'UNAUTHORIZED'));
      await assert.rejects(svc.enroll(signEnrollment(thief, { deviceId: 'old-1', enrollmentSecret: 'fleet-secret' }, now)), (e) =>
        isIbuError(e, 'UNAUTHORIZED'),
      );
      const k = newDeviceKey();
      const { token } = await svc.enroll(signEnrollment(k, { deviceId: 'old-1' }, now), legacyToken);
      await svc.checkin('old-1', token, idle);
      assert.ok((await repo.getDevice('old-1'))!.publicKey);
    });

    test('unknown ids and bad credentials get the same answer', async () => {
      const unknownCheckin = await refusal(svc.checkin('nobody-here', 'x', idle));
      const badToken = await refusal(svc.checkin('box-1', 'x', idle));
      const noToken = await refusal(svc.checkin('box-1', undefined, idle));
      assert.deepEqual(unknownCheckin, badToken);
      assert.deepEqual(unknownCheckin, noToken);
      const unknownEnroll = await refusal(svc.enroll(signEnrollment(thief, { deviceId: 'nobody-here' }, now)));
      const takenEnroll = await refusal(svc.enroll(signEnrollment(thief, { deviceId: 'box-1' }, now)));
      const wrongSecret = await refusal(svc.enroll(signEnrollment(thief, { deviceId: 'nobody-here', enrollmentSecret: 'nope' }, now)));
      assert.deepEqual(unknownEnroll, takenEnroll);
      assert.deepEqual(unknownEnroll, wrongSecret);
      assert.equal(unknownEnroll.code, 'UNAUTHORIZED');
    });
  });
}
