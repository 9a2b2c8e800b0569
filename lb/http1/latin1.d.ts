// Node's Buffer has latin1 fast paths without the encoding dispatch of toString()/write()
// (lib/buffer.js; undici's parser uses them too). They are not in @types/node.
declare global {
  interface Buffer {
    latin1Slice(start?: number, end?: number): string;
    latin1Write(string: string, offset?: number, length?: number): number;
  }
}
export {};
