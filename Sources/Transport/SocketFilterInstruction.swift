/// One instruction of a classic BPF program (what `SO_ATTACH_REUSEPORT_CBPF` takes): an opcode,
/// the jump offsets when a comparison holds or fails, and a constant. Transport attaches programs;
/// the layer that knows what the datagrams mean writes them.
public struct SocketFilterInstruction: Sendable, Equatable {
    public var code: UInt16
    public var jumpIfTrue: UInt8
    public var jumpIfFalse: UInt8
    public var k: UInt32

    /// A statement (load, store, arithmetic, return, unconditional jump).
    public static func statement(_ code: UInt16, _ k: UInt32 = 0) -> Self { Self(code: code, jumpIfTrue: 0, jumpIfFalse: 0, k: k) }

    /// A conditional jump: compare A with `k`, skip `ifTrue` or `ifFalse` instructions.
    public static func jump(_ code: UInt16, _ k: UInt32, ifTrue: UInt8, ifFalse: UInt8) -> Self {
        Self(code: code, jumpIfTrue: ifTrue, jumpIfFalse: ifFalse, k: k)
    }

    // The opcode parts of linux/filter.h (classes, sizes, modes, operations, sources).
    public static let ld: UInt16 = 0x00, ldx: UInt16 = 0x01, st: UInt16 = 0x02, alu: UInt16 = 0x04
    public static let jmp: UInt16 = 0x05, ret: UInt16 = 0x06, misc: UInt16 = 0x07
    public static let word: UInt16 = 0x00, byte: UInt16 = 0x10
    public static let imm: UInt16 = 0x00, abs: UInt16 = 0x20, ind: UInt16 = 0x40, mem: UInt16 = 0x60, len: UInt16 = 0x80
    public static let add: UInt16 = 0x00, sub: UInt16 = 0x10, mul: UInt16 = 0x20
    public static let ja: UInt16 = 0x00, jeq: UInt16 = 0x10, jgt: UInt16 = 0x20, jge: UInt16 = 0x30
    public static let constant: UInt16 = 0x00, indexRegister: UInt16 = 0x08, accumulator: UInt16 = 0x10
    public static let tax: UInt16 = 0x00, txa: UInt16 = 0x80

    /// The most instructions the kernel takes (BPF_MAXINSNS).
    public static let maximumCount = 4_096
}
