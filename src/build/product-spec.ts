import { LineCounter, isMap, isScalar, isSeq, parseDocument, type Node as YamlNode, type Pair, type YAMLMap } from 'yaml';
import { IbuError } from '../errors.js';

/**
 * The product spec (product.yaml): everything `ibu build lock` and `ibu build` need to make an
 * appliance image from Debian packages. Reference in docs/build.md. Parsing is pure: text in,
 * a resolved spec or one SPEC_INVALID listing every problem with its line out.
 */
export interface ProductSpec {
  /** Product identity: seeds the ext4 UUID and directory hash seed (src/image/product-identity.ts). */
  product: string;
  distribution: 'debian';
  suite: Suite;
  architecture: string;
  /** mmdebstrap variant: what is installed before `packages`. */
  variant: Variant;
  mirrors: Mirror[];
  packages: string[];
  /** The kernel package (its /vmlinuz and /initrd.img are what GRUB boots); null for a kernel-less image. */
  kernel: string | null;
  /** Directories (relative to the spec) whose `*.deb` files are the vendor's own packages. */
  vendorDebs: string[];
  /** Directories copied over the root, in order, owned by root, modes kept. */
  overlays: string[];
  /** Executables run on the build host after packages, overlays, users and units, in order (docs/build.md). */
  hooks: string[];
  groups: GroupSpec[];
  users: UserSpec[];
  systemd: { enable: string[]; mask: string[] };
  hostname: string;
  /**
   * A read-only image (docs/boot.md "Read-only root"): the build marks it (usr/lib/ibu/readonly),
   * the initramfs mounts its root read-only with /etc and /var as overlays on the host, and the
   * agent merges /etc three ways on upgrade.
   */
  readonly: boolean;
  image: { size: number };
  /** Every timestamp in the root and the image; null: the newest archive Release date in the lock. */
  sourceDateEpoch: number | null;
}

export interface Mirror {
  uri: string;
  suites: string[];
  components: string[];
}

export interface GroupSpec {
  name: string;
  gid: number | null;
  system: boolean;
}

export interface UserSpec {
  name: string;
  uid: number | null;
  /** Primary group: a group of the same name is made when null. */
  group: string | null;
  groups: string[];
  shell: string;
  home: string | null;
  system: boolean;
}

export const SUITES = ['trixie', 'bookworm'] as const;
export type Suite = (typeof SUITES)[number];
export const VARIANTS = ['minbase', 'essential', 'required', 'important', 'standard'] as const;
export type Variant = (typeof VARIANTS)[number];

const TOP_KEYS = [
  'product',
  'distribution',
  'suite',
  'architecture',
  'variant',
  'mirrors',
  'components',
  'packages',
  'kernel',
  'vendor-debs',
  'overlays',
  'hooks',
  'groups',
  'users',
  'systemd',
  'hostname',
  'readonly',
  'image',
  'source-date-epoch',
] as const;

const NAME = /^[a-z0-9][a-z0-9+.-]*$/; // a Debian package name
const ACCOUNT = /^[a-z_][a-z0-9_-]{0,31}$/;
const UNIT = /^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount|automount|swap|slice)$/;
const HOSTNAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const SIZE = /^(\d+(?:\.\d+)?)\s*([KMGT])?i?B?$/i;
const MIN_IMAGE = 64 * 1024 * 1024;

/** One problem per entry, `line N: where: what` so an editor jump finds it. */
class Problems {
  readonly list: string[] = [];
  constructor(private readonly lines: LineCounter) {}
  at(node: YamlNode | Pair | null | undefined, where: string, what: string): void {
    const off = node && 'range' in node && node.range ? node.range[0] : undefined;
    const line = off === undefined ? undefined : this.lines.linePos(off).line;
    this.list.push(`${line === undefined ? '' : `line ${line}: `}${where}: ${what}`);
  }
}

/** Parses and validates a product spec. `file` names it in messages only. Throws SPEC_INVALID. */
export function parseProductSpec(text: string, file = 'product.yaml'): ProductSpec {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const p = new Problems(lines);
  for (const e of doc.errors) p.list.push(`line ${lines.linePos(e.pos[0]).line}: YAML: ${e.message.split('\n')[0]}`);
  if (doc.errors.length > 0) throw invalid(file, p.list);
  const root = doc.contents;
  if (!isMap(root)) throw invalid(file, ['the spec must be a YAML mapping (key: value lines), e.g. `product: my-box`']);
  const get = mapReader(root, '', TOP_KEYS, p);

  const product = str(get('product'), 'product', p, { required: true, parent: root, re: /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, hint: 'letters, digits, . _ -' });
  const distribution = str(get('distribution'), 'distribution', p, { def: 'debian' });
  if (distribution !== 'debian') p.at(get('distribution'), 'distribution', `'${distribution}' is not supported: only debian`);
  const suite = oneOf(get('suite'), 'suite', SUITES, p, { required: true, parent: root });
  const architecture = str(get('architecture'), 'architecture', p, { def: 'amd64', re: /^[a-z0-9-]+$/ });
  const variant = oneOf(get('variant'), 'variant', VARIANTS, p, { def: 'minbase' });
  const components = strList(get('components'), 'components', p, { def: ['main'], re: /^[a-z0-9/-]+$/ });
  const mirrors = parseMirrors(get('mirrors'), suite ?? 'trixie', components, p);
  const packages = strList(get('packages'), 'packages', p, { def: [], re: NAME, unique: true });
  const kernelNode = get('kernel');
  const kernel = isScalar(kernelNode) && kernelNode.value === null ? null : str(kernelNode, 'kernel', p, { def: `linux-image-${architecture}`, re: NAME });
  const vendorDebs = strList(get('vendor-debs'), 'vendor-debs', p, { def: [], re: /^[^\0]+$/ });
  const overlays = strList(get('overlays'), 'overlays', p, { def: [], re: /^[^\0]+$/ });
  const hooks = strList(get('hooks'), 'hooks', p, { def: [], re: /^[^\0]+$/ });
  const groups = parseGroups(get('groups'), p);
  const users = parseUsers(get('users'), p);
  const systemd = parseSystemd(get('systemd'), p);
  const hostname = str(get('hostname'), 'hostname', p, { def: 'debian', re: HOSTNAME, hint: 'lower-case letters, digits and -' });
  const readonly = bool(get('readonly'), 'readonly', p);
  const image = parseImage(get('image'), p);
  const sde = get('source-date-epoch');
  const sourceDateEpoch = sde === undefined ? null : int(sde, 'source-date-epoch', p, { min: 0, max: 2 ** 33 });

  const known = new Set([...groups.map((g) => g.name)]);
  for (const [i, u] of users.entries()) {
    for (const g of u.groups) {
      if (!known.has(g) && !BASE_GROUPS.has(g)) {
        p.at(seqItem(get('users'), i), `users[${i}].groups`, `'${g}' is neither in groups: nor a Debian base group`);
      }
    }
  }
  if (p.list.length > 0) throw invalid(file, p.list);
  return {
    product: product!,
    distribution: 'debian',
    suite: suite!,
    architecture: architecture!,
    variant: variant!,
    mirrors,
    packages: packages!,
    kernel: kernel ?? null,
    vendorDebs: vendorDebs!,
    overlays: overlays!,
    hooks: hooks!,
    groups,
    users,
    systemd,
    hostname: hostname!,
    readonly,
    image,
    sourceDateEpoch: sourceDateEpoch ?? null,
  };
}

/** Groups every Debian root has (base-passwd), which users may join without declaring them. */
const BASE_GROUPS = new Set([
  'root',
  'daemon',
  'bin',
  'sys',
  'adm',
  'tty',
  'disk',
  'lp',
  'mail',
  'news',
  'uucp',
  'man',
  'proxy',
  'kmem',
  'dialout',
  'fax',
  'voice',
  'cdrom',
  'floppy',
  'tape',
  'sudo',
  'audio',
  'dip',
  'www-data',
  'backup',
  'operator',
  'list',
  'irc',
  'src',
  'shadow',
  'utmp',
  'video',
  'sasl',
  'plugdev',
  'staff',
  'games',
  'users',
  'nogroup',
  'systemd-journal',
  'input',
  'render',
  'kvm',
  'netdev',
]);

function invalid(file: string, problems: string[]): IbuError {
  const n = problems.length;
  return new IbuError('SPEC_INVALID', `the product spec ${file} has ${n} problem${n > 1 ? 's' : ''}:\n  - ${problems.join('\n  - ')}`, {
    details: { problems, file },
  });
}

/** Reads a mapping's values by key; every key not in `allowed` is a problem (typos included). */
function mapReader(map: YAMLMap, where: string, allowed: readonly string[], p: Problems): (key: string) => YamlNode | undefined {
  const seen = new Map<string, YamlNode | undefined>();
  for (const pair of map.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
    const at = where ? `${where}.${key}` : key;
    if (!allowed.includes(key)) {
      const near = allowed.find((k) => editDistance(k, key) <= 2);
      p.at(pair.key as YamlNode, at, `unknown key${near ? ` (did you mean '${near}'?)` : ''}; known: ${allowed.join(', ')}`);
      continue;
    }
    seen.set(key, (pair.value ?? undefined) as YamlNode | undefined);
  }
  return (key) => seen.get(key);
}

interface StrOpts {
  required?: boolean;
  def?: string;
  re?: RegExp;
  hint?: string;
  /** Where a missing required key is reported (its mapping). */
  parent?: YamlNode;
}

function str(node: YamlNode | undefined, where: string, p: Problems, o: StrOpts = {}): string | undefined {
  if (node === undefined || (isScalar(node) && node.value === null)) {
    if (o.required) p.at(node ?? o.parent, where, 'missing (required)');
    return o.def;
  }
  if (!isScalar(node) || typeof node.value !== 'string') {
    if (isScalar(node) && (typeof node.value === 'number' || typeof node.value === 'boolean')) return check(String(node.value), node, where, p, o);
    p.at(node, where, 'must be a string');
    return o.def;
  }
  return check(node.value, node, where, p, o);
}

function check(v: string, node: YamlNode, where: string, p: Problems, o: StrOpts): string | undefined {
  if (o.re && !o.re.test(v)) {
    p.at(node, where, `'${v}' is not valid${o.hint ? ` (${o.hint})` : ''}`);
    return o.def;
  }
  return v;
}

function oneOf<T extends string>(node: YamlNode | undefined, where: string, values: readonly T[], p: Problems, o: StrOpts): T | undefined {
  const v = str(node, where, p, o);
  if (v === undefined) return undefined;
  if (!(values as readonly string[]).includes(v)) {
    p.at(node, where, `'${v}' is not one of ${values.join(', ')}`);
    return undefined;
  }
  return v as T;
}

function int(node: YamlNode, where: string, p: Problems, o: { min: number; max: number }): number | undefined {
  if (!isScalar(node) || typeof node.value !== 'number' || !Number.isInteger(node.value) || node.value < o.min || node.value > o.max) {
    p.at(node, where, `must be a whole number from ${o.min} to ${o.max}`);
    return undefined;
  }
  return node.value;
}

function bool(node: YamlNode | undefined, where: string, p: Problems): boolean {
  if (node === undefined) return false;
  if (!isScalar(node) || typeof node.value !== 'boolean') {
    p.at(node, where, 'must be true or false');
    return false;
  }
  return node.value;
}

function strList(node: YamlNode | undefined, where: string, p: Problems, o: { def?: string[]; re?: RegExp; unique?: boolean }): string[] | undefined {
  if (node === undefined || (isScalar(node) && node.value === null)) return o.def;
  if (!isSeq(node)) {
    p.at(node, where, 'must be a list (`- item` lines or [a, b])');
    return o.def;
  }
  const out: string[] = [];
  node.items.forEach((item, i) => {
    const v = str(item as YamlNode, `${where}[${i}]`, p, { re: o.re });
    if (v === undefined) return;
    if (o.unique && out.includes(v)) p.at(item as YamlNode, `${where}[${i}]`, `'${v}' is listed twice`);
    else out.push(v);
  });
  return out;
}

function seqItem(node: YamlNode | undefined, i: number): YamlNode | undefined {
  return isSeq(node) ? (node.items[i] as YamlNode) : node;
}

function parseMirrors(node: YamlNode | undefined, suite: string, components: string[] | undefined, p: Problems): Mirror[] {
  const comps = components ?? ['main'];
  if (node === undefined) return [{ uri: 'http://deb.debian.org/debian', suites: [suite], components: comps }];
  if (!isSeq(node) || node.items.length === 0) {
    p.at(node, 'mirrors', 'must be a non-empty list of {uri, suites, components}');
    return [];
  }
  const out: Mirror[] = [];
  node.items.forEach((item, i) => {
    const where = `mirrors[${i}]`;
    if (isScalar(item)) {
      const uri = str(item as YamlNode, where, p, { re: /^https?:\/\/\S+$/, hint: 'an http:// or https:// URL' });
      if (uri) out.push({ uri: uri.replace(/\/+$/, ''), suites: [suite], components: comps });
      return;
    }
    if (!isMap(item)) {
      p.at(item as YamlNode, where, 'must be a URL or a mapping with uri, suites, components');
      return;
    }
    const get = mapReader(item, where, ['uri', 'suites', 'components'], p);
    const uri = str(get('uri'), `${where}.uri`, p, { required: true, parent: item, re: /^https?:\/\/\S+$/, hint: 'an http:// or https:// URL' });
    const suites = strList(get('suites'), `${where}.suites`, p, { def: [suite], re: /^[a-z0-9/-]+$/ });
    const cs = strList(get('components'), `${where}.components`, p, { def: comps, re: /^[a-z0-9/-]+$/ });
    if (uri && suites && cs) out.push({ uri: uri.replace(/\/+$/, ''), suites, components: cs });
  });
  return out;
}

function parseGroups(node: YamlNode | undefined, p: Problems): GroupSpec[] {
  if (node === undefined) return [];
  if (!isSeq(node)) {
    p.at(node, 'groups', 'must be a list of {name, gid, system}');
    return [];
  }
  const out: GroupSpec[] = [];
  node.items.forEach((item, i) => {
    const where = `groups[${i}]`;
    if (!isMap(item)) return p.at(item as YamlNode, where, 'must be a mapping with name (and gid, system)');
    const get = mapReader(item, where, ['name', 'gid', 'system'], p);
    const name = str(get('name'), `${where}.name`, p, { required: true, parent: item, re: ACCOUNT, hint: 'lower-case, starts with a letter' });
    const gidNode = get('gid');
    const gid = gidNode === undefined ? null : (int(gidNode, `${where}.gid`, p, { min: 1, max: 65533 }) ?? null);
    if (name && out.some((g) => g.name === name)) p.at(item, where, `group '${name}' is declared twice`);
    if (name) out.push({ name, gid, system: bool(get('system'), `${where}.system`, p) });
  });
  return out;
}

function parseUsers(node: YamlNode | undefined, p: Problems): UserSpec[] {
  if (node === undefined) return [];
  if (!isSeq(node)) {
    p.at(node, 'users', 'must be a list of {name, uid, group, groups, shell, home, system}');
    return [];
  }
  const out: UserSpec[] = [];
  node.items.forEach((item, i) => {
    const where = `users[${i}]`;
    if (!isMap(item)) return p.at(item as YamlNode, where, 'must be a mapping with name (and uid, group, groups, shell, home, system)');
    const get = mapReader(item, where, ['name', 'uid', 'group', 'groups', 'shell', 'home', 'system'], p);
    const name = str(get('name'), `${where}.name`, p, { required: true, parent: item, re: ACCOUNT, hint: 'lower-case, starts with a letter' });
    const uidNode = get('uid');
    const uid = uidNode === undefined ? null : (int(uidNode, `${where}.uid`, p, { min: 1, max: 65533 }) ?? null);
    const group = str(get('group'), `${where}.group`, p, { re: ACCOUNT }) ?? null;
    const groups = strList(get('groups'), `${where}.groups`, p, { def: [], re: ACCOUNT, unique: true }) ?? [];
    const shell = str(get('shell'), `${where}.shell`, p, { def: '/bin/bash', re: /^\/\S+$/, hint: 'an absolute path' })!;
    const home = str(get('home'), `${where}.home`, p, { re: /^\/\S*$/, hint: 'an absolute path' }) ?? null;
    if (name && out.some((u) => u.name === name)) p.at(item, where, `user '${name}' is declared twice`);
    if (name) out.push({ name, uid, group, groups, shell, home, system: bool(get('system'), `${where}.system`, p) });
  });
  return out;
}

function parseSystemd(node: YamlNode | undefined, p: Problems): { enable: string[]; mask: string[] } {
  if (node === undefined) return { enable: [], mask: [] };
  if (!isMap(node)) {
    p.at(node, 'systemd', 'must be a mapping with enable: and mask: lists');
    return { enable: [], mask: [] };
  }
  const get = mapReader(node, 'systemd', ['enable', 'mask'], p);
  const hint = { def: [], re: UNIT, unique: true };
  const enable = strList(get('enable'), 'systemd.enable', p, hint) ?? [];
  const mask = strList(get('mask'), 'systemd.mask', p, hint) ?? [];
  for (const u of enable) if (mask.includes(u)) p.at(get('mask'), 'systemd.mask', `'${u}' is both enabled and masked`);
  return { enable, mask };
}

function parseImage(node: YamlNode | undefined, p: Problems): { size: number } {
  if (!isMap(node)) {
    p.at(node, 'image', node === undefined ? 'missing: give image: {size: 2G}' : 'must be a mapping with size');
    return { size: 0 };
  }
  const get = mapReader(node, 'image', ['size'], p);
  const sizeNode = get('size');
  const text = sizeNode === undefined ? undefined : str(sizeNode, 'image.size', p);
  if (text === undefined) {
    if (sizeNode === undefined) p.at(node, 'image.size', 'missing: give the image size, e.g. 2G');
    return { size: 0 };
  }
  const size = parseSizeText(text);
  if (size === null) p.at(sizeNode, 'image.size', `'${text}' is not a size (bytes or 512M, 2G, ...)`);
  else if (size < MIN_IMAGE) p.at(sizeNode, 'image.size', `${text} is too small for a Debian root; give at least 64M`);
  return { size: size ?? 0 };
}

/** Bytes from `2G`, `512M`, `1.5GiB` or a plain number (binary units). */
export function parseSizeText(s: string): number | null {
  const m = SIZE.exec(s.trim());
  if (!m) return null;
  const unit = m[2]?.toUpperCase();
  const mult = unit === undefined ? 1 : 1024 ** ('KMGT'.indexOf(unit) + 1);
  return Math.floor(Number(m[1]) * mult);
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
  }
  return d[a.length]![b.length]!;
}
