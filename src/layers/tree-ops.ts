/**
 * The records of the addon's applyOps(): entries to make beneath a root fd, encoded into one Buffer per batch
 * so that thousands of entries cost one trip to the thread pool and no per-property marshalling. The layout
 * is native/tree.cc's `Head` (56 bytes, little-endian), then the path bytes, then the xattrs.
 */

export const OpKind = {
  Dir: 1,
  File: 2,
  Symlink: 3,
  Hardlink: 4,
  Node: 5,
  Remove: 6,
  Meta: 7,
  OpenFile: 8,
  FdMeta: 9,
} as const;
export type OpKind = (typeof OpKind)[keyof typeof OpKind];

export const OpFlag = { Chown: 1, Chmod: 2, Times: 4, Recursive: 8 } as const;

const HEAD = 56;
const NO_DATA = 0xffffffff;

export interface TreeOp {
  kind: OpKind;
  flags?: number;
  /** Parent directory below the root, a byte string ("" for the root itself). */
  parent: string;
  /** The entry's name in it (a byte string); "." for the parent itself. */
  name: string;
  /** Symlink text, or a hard link target's parent. */
  target?: string;
  /** A hard link target's name. */
  target2?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtimeSec?: number;
  mtimeNsec?: number;
  rdevMajor?: number;
  rdevMinor?: number;
  /** File: index of its body in the batch's data; FdMeta: the fd. */
  dataIndex?: number;
  xattrs?: Array<[name: string, value: Buffer]>;
}

/** A batch being built: records appended to a growing Buffer, bodies kept by reference. */
export class OpBatch {
  private buf = Buffer.allocUnsafe(64 * 1024);
  private len = 0;
  /** Records in the batch, and what each one is (for error messages: the entry a failed record made). */
  readonly entries: string[] = [];
  readonly data: Buffer[] = [];
  dataBytes = 0;

  get count(): number {
    return this.entries.length;
  }

  /** Appends a record; `entry` is the archive entry it is for (shown if it fails). */
  add(op: TreeOp, entry: string): void {
    const parent = op.parent;
    const name = op.name;
    const target = op.target ?? "";
    const target2 = op.target2 ?? "";
    let need = HEAD + parent.length + name.length + target.length + target2.length;
    if (op.xattrs) for (const [n, v] of op.xattrs) need += 8 + n.length + v.length;
    this.reserve(need);
    const b = this.buf;
    let o = this.len;
    b[o] = op.kind;
    b[o + 1] = op.flags ?? 0;
    b.writeUInt16LE(op.xattrs?.length ?? 0, o + 2);
    b.writeUInt32LE(parent.length, o + 4);
    b.writeUInt32LE(name.length, o + 8);
    b.writeUInt32LE(target.length, o + 12);
    b.writeUInt32LE(target2.length, o + 16);
    b.writeUInt32LE((op.mode ?? 0) >>> 0, o + 20);
    b.writeUInt32LE((op.uid ?? 0) >>> 0, o + 24);
    b.writeUInt32LE((op.gid ?? 0) >>> 0, o + 28);
    // A 64-bit signed seconds field from a double: exact for every time a tar header can hold.
    const sec = op.mtimeSec ?? 0;
    b.writeBigInt64LE(BigInt(Math.trunc(sec)), o + 32);
    b.writeUInt32LE(op.mtimeNsec ?? 0, o + 40);
    b.writeUInt32LE(op.rdevMajor ?? 0, o + 44);
    b.writeUInt32LE(op.rdevMinor ?? 0, o + 48);
    b.writeUInt32LE(op.dataIndex ?? NO_DATA, o + 52);
    o += HEAD;
    o += b.write(parent, o, "latin1");
    o += b.write(name, o, "latin1");
    o += b.write(target, o, "latin1");
    o += b.write(target2, o, "latin1");
    if (op.xattrs) {
      for (const [n, v] of op.xattrs) {
        b.writeUInt32LE(n.length, o);
        b.writeUInt32LE(v.length, o + 4);
        o += 8;
        o += b.write(n, o, "latin1");
        o += v.copy(b, o);
      }
    }
    this.len = o;
    this.entries.push(entry);
  }

  /** Keeps a body for a File record; returns its index. */
  addData(d: Buffer): number {
    this.data.push(d);
    this.dataBytes += d.length;
    return this.data.length - 1;
  }

  /** The records as one Buffer (a view, valid until the batch is added to again). */
  bytes(): Buffer {
    return this.buf.subarray(0, this.len);
  }

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }
}
