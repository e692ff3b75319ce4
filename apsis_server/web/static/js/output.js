// A run's output as loaded: from `start`, decoded and rendered (ANSI colours) as
// it comes; earlier bytes can be put in front ("load earlier").

import { AnsiRenderer } from "./ansi.js";

// Output bytes as loaded: from `start`, decoded and rendered as they come.
export class Output {
  constructor(pre) {
    this.pre = pre;
    this.start = null;
    this.chunks = [];
    this.length = 0;
    this._reset();
  }

  _reset() {
    this.pre.replaceChildren();
    this.decoder = new TextDecoder("utf-8");
    this.renderer = new AnsiRenderer(this.pre);
  }

  get end() {
    return this.start === null ? null : this.start + this.length;
  }

  _write(bytes, first) {
    let data = bytes;
    // A tail may begin inside a UTF-8 character: skip its continuation bytes.
    if (first && this.start > 0) {
      let skip = 0;
      while (skip < data.length && skip < 3 && (data[skip] & 0xc0) === 0x80) skip++;
      data = data.subarray(skip);
    }
    this.renderer.write(this.decoder.decode(data, { stream: true }));
  }

  append(offset, bytes) {
    if (this.start === null) this.start = offset;
    const end = this.end;
    if (offset + bytes.length <= end && this.length > 0) return; // seen already
    if (offset > end) return; // a gap should not happen; the feed restarts from `end`
    const fresh = bytes.subarray(end - offset);
    if (fresh.length === 0) return;
    const follow = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 24;
    this.chunks.push(fresh);
    this.length += fresh.length;
    this._write(fresh, this.chunks.length === 1);
    if (follow) this.pre.scrollTop = this.pre.scrollHeight;
  }

  prepend(bytes) {
    this.start -= bytes.length;
    this.chunks.unshift(bytes);
    this.length += bytes.length;
    this._reset();
    this.chunks.forEach((chunk, i) => this._write(chunk, i === 0));
  }
}
