//! The stack each kernel program can use, read from the BPF object itself: before
//! Linux 6.13 the frames of a whole BPF-to-BPF call chain share 512 bytes (each frame
//! rounded up to 32), and a program over that is refused ("combined stack size of N
//! calls is M. Too large"). 6.13+ gives tracing programs a private stack, so the
//! development kernel would never show an overflow: this check does, on any kernel.
//! <https://elixir.bootlin.com/linux/v6.12/source/kernel/bpf/verifier.c#L6111>
//!
//! The analysis is conservative: a frame is the deepest `r10`-relative access in the
//! function, and a chain is the deepest over every call the code contains.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    reason = "a reader of a 64-bit ELF object, run by tests on a 64-bit host: its offsets fit usize and i64"
)]
use std::collections::HashMap;

/// (name, type, section, value, size) of one ELF symbol.
type Symbol = (String, u8, usize, usize, usize);

/// The limit before 6.13 (`MAX_BPF_STACK`).
pub const MAX_STACK: u32 = 512;

struct Function {
    name: String,
    section: usize,
    start: usize,
    len: usize,
}

/// Each program (a function outside `.text`) and its deepest call chain in bytes, with
/// the chain's frames for the message.
pub fn program_stacks(elf: &[u8]) -> Result<Vec<(String, u32, String)>, &'static str> {
    let elf = Elf::parse(elf)?;
    let functions = elf.functions()?;
    let relocations = elf.call_relocations()?;
    let text = elf.section_index(".text");
    let frames: Vec<(u32, Vec<usize>)> =
        functions.iter().map(|f| frame_and_calls(&elf, f, &functions, &relocations)).collect();
    let mut out = Vec::new();
    for (index, function) in functions.iter().enumerate() {
        if Some(function.section) != text {
            let (depth, chain) = deepest(index, &frames, &functions, &mut Vec::new());
            out.push((function.name.clone(), depth, chain.join(" -> ")));
        }
    }
    Ok(out)
}

fn deepest(
    index: usize,
    frames: &[(u32, Vec<usize>)],
    functions: &[Function],
    seen: &mut Vec<usize>,
) -> (u32, Vec<String>) {
    let (frame, calls) = &frames[index];
    seen.push(index);
    let mut best = (0, Vec::new());
    for &callee in calls {
        if !seen.contains(&callee) {
            let candidate = deepest(callee, frames, functions, seen);
            if candidate.0 > best.0 {
                best = candidate;
            }
        }
    }
    seen.pop();
    let rounded = (*frame).max(1).div_ceil(32) * 32;
    let mut chain = vec![format!("{}:{frame}", short(&functions[index].name))];
    chain.extend(best.1);
    (rounded + best.0, chain)
}

/// `_RNvNtCs.._14flowtel_probes7traffic9tcp_entry` -> `tcp_entry`.
fn short(name: &str) -> &str {
    let mut rest = name;
    let mut last = name;
    while let Some(pos) = rest.find(|c: char| c.is_ascii_digit()) {
        let digits: String = rest[pos..].chars().take_while(char::is_ascii_digit).collect();
        let Ok(len) = digits.parse::<usize>() else { break };
        let start = pos + digits.len();
        if start + len > rest.len() {
            break;
        }
        last = &rest[start..start + len];
        rest = &rest[start + len..];
    }
    last
}

/// The function's frame and the functions it calls.
fn frame_and_calls(
    elf: &Elf,
    function: &Function,
    functions: &[Function],
    relocations: &HashMap<(usize, usize), Target>,
) -> (u32, Vec<usize>) {
    let code = elf.section_data(function.section).unwrap_or_default();
    let mut depth: i64 = 0;
    let mut calls = Vec::new();
    // Registers known to hold r10 plus an offset (a stack pointer handed to a helper).
    let mut stack_pointers: HashMap<u8, i64> = HashMap::new();
    let mut pc = 0;
    while pc < function.len / 8 {
        let at = function.start + pc * 8;
        let Some(insn) = code.get(at..at + 8) else { break };
        let (opcode, dst, src) = (insn[0], insn[1] & 0xf, insn[1] >> 4);
        let offset = i64::from(i16::from_le_bytes([insn[2], insn[3]]));
        let imm = i64::from(i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]));
        let class = opcode & 7;
        if opcode == 0x18 {
            // A 16-byte load of a 64-bit constant or a map address.
            stack_pointers.remove(&dst);
            pc += 2;
            continue;
        }
        match class {
            // LDX, ST, STX: memory at base + offset.
            1..=3 => {
                let base = if class == 1 { src } else { dst };
                let base_offset = if base == 10 { Some(0) } else { stack_pointers.get(&base).copied() };
                if let Some(base_offset) = base_offset {
                    depth = depth.max(-(base_offset + offset));
                }
                if class == 1 {
                    stack_pointers.remove(&dst);
                }
            }
            _ if opcode == 0xbf && src == 10 => {
                stack_pointers.insert(dst, 0);
            }
            _ if opcode == 0x07 && stack_pointers.contains_key(&dst) => {
                let value = stack_pointers.get(&dst).copied().unwrap_or(0) + imm;
                stack_pointers.insert(dst, value);
                depth = depth.max(-value);
            }
            _ if opcode == 0x85 => {
                let target = match relocations.get(&(function.section, at)) {
                    Some(Target::Section(section)) => find(functions, *section, ((imm + 1) * 8) as usize),
                    Some(Target::Function(name)) => functions.iter().position(|f| &f.name == name),
                    None if src == 1 => find(functions, function.section, (at as i64 + (imm + 1) * 8) as usize),
                    None => None,
                };
                calls.extend(target);
                for register in 0..=5 {
                    stack_pointers.remove(&register);
                }
            }
            4 | 7 => {
                stack_pointers.remove(&dst);
            }
            _ => {}
        }
        pc += 1;
    }
    (u32::try_from(depth).unwrap_or(u32::MAX), calls)
}

fn find(functions: &[Function], section: usize, offset: usize) -> Option<usize> {
    functions.iter().position(|f| f.section == section && f.start <= offset && offset < f.start + f.len.max(1))
}

enum Target {
    /// A call through a section symbol: the immediate locates the callee.
    Section(usize),
    Function(String),
}

/// Just enough of ELF64 little-endian: sections, the symbol table, relocations.
struct Elf<'a> {
    data: &'a [u8],
    sections: Vec<(String, u32, usize, usize, usize, usize)>,
}

impl<'a> Elf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, &'static str> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
        let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
        let u64_at =
            |o: usize| data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize);
        let bad = "malformed ELF";
        let (shoff, shentsize, shnum, shstrndx) =
            (u64_at(0x28).ok_or(bad)?, u16_at(0x3a).ok_or(bad)?, u16_at(0x3c).ok_or(bad)?, u16_at(0x3e).ok_or(bad)?);
        let mut raw = Vec::new();
        for i in 0..shnum {
            let at = shoff + i * shentsize;
            raw.push((
                u32_at(at).ok_or(bad)?,
                u32_at(at + 4).ok_or(bad)?,
                u64_at(at + 0x18).ok_or(bad)?,
                u64_at(at + 0x20).ok_or(bad)?,
                u32_at(at + 0x28).ok_or(bad)? as usize,
                u32_at(at + 0x2c).ok_or(bad)? as usize,
            ));
        }
        let names = raw.get(shstrndx).ok_or(bad)?.2;
        let sections = raw
            .iter()
            .map(|&(name, kind, offset, size, link, info)| {
                (c_string(data, names + name as usize), kind, offset, size, link, info)
            })
            .collect();
        Ok(Self { data, sections })
    }

    fn section_index(&self, name: &str) -> Option<usize> {
        self.sections.iter().position(|s| s.0 == name)
    }

    fn section_data(&self, index: usize) -> Option<&'a [u8]> {
        let s = self.sections.get(index)?;
        self.data.get(s.2..s.2 + s.3)
    }

    /// (name, type, section, value, size) of every symbol.
    fn symbols(&self) -> Result<Vec<Symbol>, &'static str> {
        let symtab = self.sections.iter().find(|s| s.1 == 2).ok_or("no symbol table")?;
        let strings = self.sections.get(symtab.4).ok_or("no string table")?.2;
        let table = self.data.get(symtab.2..symtab.2 + symtab.3).ok_or("symbol table out of bounds")?;
        Ok(table
            .chunks_exact(24)
            .map(|s| {
                let name = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize;
                let section = u16::from_le_bytes([s[6], s[7]]) as usize;
                let value = u64::from_le_bytes(s[8..16].try_into().unwrap_or_default()) as usize;
                let size = u64::from_le_bytes(s[16..24].try_into().unwrap_or_default()) as usize;
                (c_string(self.data, strings + name), s[4] & 0xf, section, value, size)
            })
            .collect())
    }

    fn functions(&self) -> Result<Vec<Function>, &'static str> {
        Ok(self
            .symbols()?
            .into_iter()
            .filter(|s| s.1 == 2)
            .map(|(name, _, section, start, len)| Function { name, section, start, len })
            .collect())
    }

    /// (section, offset of the call) -> what the call's relocation names.
    fn call_relocations(&self) -> Result<HashMap<(usize, usize), Target>, &'static str> {
        let symbols = self.symbols()?;
        let mut out = HashMap::new();
        for section in self.sections.iter().filter(|s| s.1 == 9) {
            let Some(table) = self.data.get(section.2..section.2 + section.3) else { continue };
            for rel in table.chunks_exact(16) {
                let offset = u64::from_le_bytes(rel[0..8].try_into().unwrap_or_default()) as usize;
                let symbol = (u64::from_le_bytes(rel[8..16].try_into().unwrap_or_default()) >> 32) as usize;
                let Some((name, kind, target_section, ..)) = symbols.get(symbol) else { continue };
                let target = if *kind == 3 { Target::Section(*target_section) } else { Target::Function(name.clone()) };
                out.insert((section.5, offset), target);
            }
        }
        Ok(out)
    }
}

fn c_string(data: &[u8], at: usize) -> String {
    let tail = data.get(at..).unwrap_or_default();
    let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
    String::from_utf8_lossy(&tail[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program fits the pre-6.13 stack, so the verifier of 5.10 to 6.12 takes it.
    #[test]
    fn every_program_fits_the_stack_of_kernels_before_6_13() {
        let stacks = program_stacks(super::super::OBJECT).expect("parse the BPF object");
        assert!(stacks.len() > 20, "{} programs found", stacks.len());
        let mut table: Vec<_> = stacks.iter().collect();
        table.sort_by_key(|(_, depth, _)| std::cmp::Reverse(*depth));
        for (program, depth, chain) in &table {
            eprintln!("{depth:4} {program:24} {chain}");
        }
        let over: Vec<_> = table.iter().filter(|(_, depth, _)| *depth > MAX_STACK).collect();
        assert!(over.is_empty(), "over {MAX_STACK} bytes of combined stack: {over:?}");
    }

    #[test]
    fn names_are_shortened_to_their_last_path_segment() {
        assert_eq!(short("_RNvNtCs6cwIZcJyub1_14flowtel_probes7traffic9tcp_entry"), "tcp_entry");
        assert_eq!(short("memset"), "memset");
    }
}
