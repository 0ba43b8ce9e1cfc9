//! Where in OpenSSL's functions the uprobes cost least.
//!
//! A uprobe turns one instruction into a breakpoint. After the program has run, the
//! kernel either emulates the displaced instruction (relative jumps and calls,
//! conditional jumps, a push of a register) or executes it out of line under a
//! single-step: a second exception. On this kind of machine (a virtual machine whose
//! debug exceptions go through the hypervisor) that second exception is nearly the
//! whole cost: 16-17 µs per call with it, 0.6 µs without (`bench -- http-cost`).
//! A uretprobe's breakpoint is the function's first instruction, usually one that
//! needs the single-step (`sub $0x18,%rsp` in Debian's OpenSSL 3).
//!
//! So, on x86-64: the entry probe goes on the first emulated instruction of the
//! function's straight-line start, while the argument registers still hold the
//! arguments; a read's return probe, instead of a uretprobe, goes on an emulated
//! instruction in front of each `ret` that every return passes exactly once, with the
//! return value already in rax. Where the code offers no such places, the classic
//! ones: the first instruction and a uretprobe.
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// Offsets from the function's symbol.
#[derive(Debug, PartialEq, Eq)]
pub struct Points {
    pub entry: u64,
    /// One plain uprobe per return path; `None`: use a uretprobe.
    pub returns: Option<Vec<u64>>,
}

/// The classic points: the function's first instruction and a uretprobe.
pub const CLASSIC: Points = Points { entry: 0, returns: None };

/// The entry probe reads the first four arguments (`SSL_read_ex`'s byte-count pointer
/// is the fourth).
const ARGUMENTS: [Register; 4] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];

/// The points for `symbol` in `file` (an ELF file's bytes, `None` if unreadable); the
/// classic ones when the function cannot be read as x86-64 code.
pub fn find(file: Option<&[u8]>, symbol: &str) -> Points {
    if !cfg!(target_arch = "x86_64") {
        return CLASSIC;
    }
    file.and_then(|data| function_code(data, symbol)).map_or(CLASSIC, |code| points_in(&code))
}

fn function_code(data: &[u8], symbol: &str) -> Option<Vec<u8>> {
    let file = object::File::parse(data).ok()?;
    if file.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let sym = file.dynamic_symbols().chain(file.symbols()).find(|s| s.name() == Ok(symbol) && s.size() > 0)?;
    let section = file.sections().find(|s| (s.address()..s.address() + s.size()).contains(&sym.address()))?;
    let bytes = section.data().ok()?;
    let start = usize::try_from(sym.address() - section.address()).ok()?;
    let end = start.checked_add(usize::try_from(sym.size()).ok()?)?;
    bytes.get(start..end).map(<[u8]>::to_vec)
}

/// The points in one function's machine code (offset 0 is its symbol).
pub fn points_in(code: &[u8]) -> Points {
    let instructions: Vec<Instruction> = Decoder::with_ip(64, code, 0, DecoderOptions::NONE).into_iter().collect();
    if instructions.iter().any(Instruction::is_invalid) {
        return CLASSIC;
    }
    let end = code.len() as u64;
    let targets: Vec<u64> =
        instructions.iter().filter(|i| is_direct_branch(i)).map(Instruction::near_branch_target).collect();
    let entry = entry_point(&instructions, &targets);
    let returns = return_points(&instructions, &targets, end);
    Points { entry, returns }
}

/// The first emulated instruction before any branch or write to an argument register,
/// that no jump in the function lands on or before (else it could run twice a call).
fn entry_point(instructions: &[Instruction], targets: &[u64]) -> u64 {
    let mut info = InstructionInfoFactory::new();
    for instruction in instructions.iter().take(16) {
        let ip = instruction.ip();
        if targets.iter().any(|&t| t > 0 && t <= ip) {
            break;
        }
        if is_emulated(instruction) {
            return ip;
        }
        if instruction.flow_control() != FlowControl::Next || writes_any(&mut info, instruction, &ARGUMENTS) {
            break;
        }
    }
    0
}

/// For each `ret`, the nearest emulated instruction before it such that the way from
/// there to the `ret` is straight, lands no jump and leaves rax alone, and that cannot
/// run twice: not a branch, or a conditional jump whose other way never returns (the
/// stack protector's call at the function's end). `None` if any `ret` has none, or
/// the function leaves by a jump elsewhere (a tail call): then a uretprobe.
fn return_points(instructions: &[Instruction], targets: &[u64], end: u64) -> Option<Vec<u64>> {
    let mut info = InstructionInfoFactory::new();
    let mut points = Vec::new();
    for (at, ret) in instructions.iter().enumerate().filter(|(_, i)| i.flow_control() == FlowControl::Return) {
        let mut point = None;
        for candidate in instructions[..at].iter().rev() {
            let between = |t: u64| t > candidate.ip() && t <= ret.ip();
            if targets.iter().any(|&t| between(t)) {
                break;
            }
            if is_emulated(candidate) && (!is_direct_branch(candidate) || never_returns(instructions, candidate, end)) {
                point = Some(candidate.ip());
                break;
            }
            if candidate.flow_control() != FlowControl::Next || writes_any(&mut info, candidate, &[Register::RAX]) {
                break;
            }
        }
        points.push(point?);
    }
    let leaves = instructions.iter().any(|i| {
        matches!(
            i.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::IndirectBranch
        ) && (!is_direct_branch(i) || i.near_branch_target() >= end)
    });
    (!points.is_empty() && !leaves).then_some(points)
}

/// A conditional jump whose target is a call followed by nothing but padding: the
/// stack protector's `__stack_chk_fail`, which does not return.
fn never_returns(instructions: &[Instruction], jump: &Instruction, end: u64) -> bool {
    if !jump.is_jcc_short_or_near() {
        return false;
    }
    let target = jump.near_branch_target();
    let Some(at) = instructions.iter().position(|i| i.ip() == target) else { return false };
    instructions[at].is_call_near()
        && instructions[at + 1..]
            .iter()
            .all(|i| matches!(i.code(), Code::Int3) || i.mnemonic() == iced_x86::Mnemonic::Nop)
        && instructions[at].next_ip() <= end
}

/// What the kernel emulates instead of single-stepping (arch/x86/kernel/uprobes.c:
/// `branch_setup_xol_ops`, `push_setup_xol_ops`), without prefixes it refuses.
fn is_emulated(instruction: &Instruction) -> bool {
    let plain_length = match instruction.code() {
        Code::Jmp_rel8_64 => 2,
        Code::Jmp_rel32_64 | Code::Call_rel32_64 => 5,
        Code::Push_r64 => {
            if instruction.op0_register().number() >= Register::R8.number() {
                2
            } else {
                1
            }
        }
        _ if instruction.is_jcc_short_or_near() => {
            if instruction.len() <= 2 {
                2
            } else {
                6
            }
        }
        _ => return false,
    };
    instruction.len() == plain_length
}

fn is_direct_branch(instruction: &Instruction) -> bool {
    instruction.is_jcc_short_or_near() || instruction.is_jmp_short_or_near() || instruction.is_call_near()
}

fn writes_any(info: &mut InstructionInfoFactory, instruction: &Instruction, registers: &[Register]) -> bool {
    info.info(instruction).used_registers().iter().any(|used| {
        registers.contains(&used.register().full_register())
            && matches!(
                used.access(),
                OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// `SSL_read` of Debian 12's libssl3 (OpenSSL 3.0), as objdump shows it: `sub`
    /// first (single-stepped), the `js` at 0x16 and the stack check's `jne` at 0x38
    /// (both emulated), one `ret`.
    const SSL_READ: &str = "4883ec1864488b042528000000488944240831c085d2782f4889e14863d2e83d \
        feffff85c07e038b0424488b54240864482b14252800000075444883c41831d2 \
        31c931f631ffc3e8449ffeff488d1505d50400be4c070000488d3d62cc0400e8 \
        2ca6feff31c031d2be0f010000bf14000000e849a4feffb8ffffffffebace83d \
        b1feff";

    fn bytes(hex: &str) -> Vec<u8> {
        let digits: String = hex.split_whitespace().collect();
        (0..digits.len()).step_by(2).map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex")).collect()
    }

    #[test]
    fn openssl_3_ssl_read_gets_emulated_entry_and_return_points() {
        assert_eq!(points_in(&bytes(SSL_READ)), Points { entry: 0x16, returns: Some(vec![0x38]) });
    }

    #[test]
    fn a_loop_back_into_the_start_or_a_tail_call_keeps_the_classic_points() {
        // test %edx,%edx; js +0; (loop:) jmp back to the js; ret
        let looped = [0x85, 0xd2, 0x78, 0x00, 0xeb, 0xfc, 0xc3];
        assert_eq!(points_in(&looped).entry, 0);
        // test %edx,%edx; jne +5; ret; jmp elsewhere (a tail call out of the function)
        let tail = [0x85, 0xd2, 0x75, 0x01, 0xc3, 0xe9, 0x00, 0x10, 0x00, 0x00];
        assert_eq!(points_in(&tail).returns, None);
    }

    #[test]
    fn an_argument_overwritten_before_the_first_emulated_instruction_keeps_the_entry() {
        // mov $1,%esi; js +0; ret
        assert_eq!(points_in(&[0xbe, 0x01, 0x00, 0x00, 0x00, 0x78, 0x00, 0xc3]).entry, 0);
    }

    #[test]
    fn the_systems_libssl_has_emulated_entry_points_and_an_ssl_read_return_point() {
        let Some(path) = ["/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib64/libssl.so.3"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "no system libssl.so.3 under CI");
            eprintln!("SKIPPED: no system libssl.so.3");
            return;
        };
        let file = std::fs::read(path).ok();
        for function in ["SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"] {
            assert_ne!(find(file.as_deref(), function).entry, 0, "{function}");
        }
        // SSL_read_ex ends in a `cmovs` into eax just before its `ret`: a uretprobe there.
        assert!(find(file.as_deref(), "SSL_read").returns.is_some());
    }
}
