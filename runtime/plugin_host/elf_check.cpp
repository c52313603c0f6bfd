#include "plugin_host/elf_check.h"

#include <elf.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <vector>

#include "rt/sdk/error.h"

namespace rt {

namespace {

// The headers are read by copying bytes into <elf.h>'s structs, which only matches the file's
// little-endian layout on a little-endian host (every host this runtime is built for).
static_assert(std::endian::native == std::endian::little, "elf_check reads little-endian ELF headers natively");

#if defined(__x86_64__)
constexpr uint16_t kHostMachine = EM_X86_64;
constexpr const char* kHostMachineName = "x86-64";
#elif defined(__aarch64__)
constexpr uint16_t kHostMachine = EM_AARCH64;
constexpr const char* kHostMachineName = "AArch64";
#else
constexpr uint16_t kHostMachine = EM_NONE;  // unknown host: the machine is not checked
constexpr const char* kHostMachineName = "this host";
#endif

const char* machine_name(uint16_t m) {
  switch (m) {
    case EM_X86_64: return "x86-64";
    case EM_AARCH64: return "AArch64";
    case EM_386: return "i386";
    case EM_ARM: return "32-bit ARM";
    case EM_RISCV: return "RISC-V";
    case EM_PPC64: return "PowerPC64";
    case EM_S390: return "s390";
    default: return "another machine";
  }
}

const char* kNotElf64 = "not a 64-bit little-endian ELF shared object";
const char* kTruncated = "truncated or corrupt shared object: ";

// Whether [offset, offset + count * entsize) lies within a file of `size` bytes; *end: that end
// (saturated at UINT64_MAX where it overflows), for the message.
bool table_fits(uint64_t offset, uint64_t count, uint64_t entsize, uint64_t size, uint64_t* end) {
  const bool overflow = entsize != 0 && count > (UINT64_MAX - offset) / entsize;
  *end = overflow ? UINT64_MAX : offset + count * entsize;
  return !overflow && *end <= size;
}

bool read_at(std::ifstream& in, uint64_t offset, void* dst, size_t n) {
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
  return in.good() && static_cast<size_t>(in.gcount()) == n;
}

std::string ends_past(const std::string& what, uint64_t end, uint64_t size) {
  return detail::concat(kTruncated, what, " ends at byte ", end, " but the file has ", size, " bytes");
}

}  // namespace

std::string elf_shared_object_problem(const std::filesystem::path& path) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return "cannot read the file: " + ec.message();
  std::ifstream in(path, std::ios::binary);
  if (!in) return "cannot open the file for reading";
  if (size == 0) return std::string("the file is empty; ") + kNotElf64;

  unsigned char ident[EI_NIDENT] = {};
  const size_t n_ident = static_cast<size_t>(std::min<uint64_t>(size, EI_NIDENT));
  if (!read_at(in, 0, ident, n_ident)) return "cannot read the file's ELF header";
  if (n_ident < SELFMAG || std::memcmp(ident, ELFMAG, SELFMAG) != 0)
    return std::string(kNotElf64) + " (the file does not start with the ELF magic number)";
  if (n_ident < EI_NIDENT)
    return detail::concat(kTruncated, "the file has ", size, " bytes, fewer than the ", sizeof(Elf64_Ehdr),
                          "-byte ELF header");
  if (ident[EI_CLASS] != ELFCLASS64)
    return detail::concat(kNotElf64, " (ELF class ", int(ident[EI_CLASS]),
                          ident[EI_CLASS] == ELFCLASS32 ? ": a 32-bit object)" : ")");
  if (ident[EI_DATA] != ELFDATA2LSB)
    return detail::concat(kNotElf64, " (data encoding ", int(ident[EI_DATA]),
                          ident[EI_DATA] == ELFDATA2MSB ? ": big-endian)" : ")");
  if (size < sizeof(Elf64_Ehdr))
    return detail::concat(kTruncated, "the file has ", size, " bytes, fewer than the ", sizeof(Elf64_Ehdr),
                          "-byte ELF header");

  Elf64_Ehdr eh;
  if (!read_at(in, 0, &eh, sizeof eh)) return "cannot read the file's ELF header";
  if (eh.e_type != ET_DYN)
    return detail::concat("not a shared object (ELF type ", eh.e_type,
                          eh.e_type == ET_EXEC ? ": an executable" : eh.e_type == ET_REL ? ": an object file" : "",
                          "; expected ET_DYN)");
  if (kHostMachine != EM_NONE && eh.e_machine != kHostMachine)
    return detail::concat("built for ", machine_name(eh.e_machine), " (ELF machine ", eh.e_machine,
                          "), but this host is ", kHostMachineName);

  // Program headers first: a PT_LOAD segment past the end of the file is what crashes dlopen.
  // With e_phnum == PN_XNUM the real count is in section header 0's sh_info.
  uint64_t end = 0;
  uint64_t phnum = eh.e_phnum;
  if (phnum == PN_XNUM) {
    Elf64_Shdr first;
    if (eh.e_shoff == 0 || !table_fits(eh.e_shoff, 1, sizeof first, size, &end) ||
        !read_at(in, eh.e_shoff, &first, sizeof first))
      return std::string(kTruncated) + "the program header count should be in section header 0, which is missing";
    phnum = first.sh_info;
  }
  if (phnum == 0) return std::string(kTruncated) + "it has no program headers, so nothing to load";
  if (eh.e_phentsize != sizeof(Elf64_Phdr))
    return detail::concat(kTruncated, "program header entries are ", eh.e_phentsize, " bytes, expected ",
                          sizeof(Elf64_Phdr));
  if (!table_fits(eh.e_phoff, phnum, sizeof(Elf64_Phdr), size, &end))
    return ends_past(detail::concat("the program header table (", phnum, " entries from byte ", eh.e_phoff, ")"),
                     end, size);
  std::vector<Elf64_Phdr> phdrs(static_cast<size_t>(phnum));
  if (!read_at(in, eh.e_phoff, phdrs.data(), phdrs.size() * sizeof(Elf64_Phdr)))
    return "cannot read the program header table";
  bool any_load = false;
  for (size_t i = 0; i < phdrs.size(); ++i) {
    const Elf64_Phdr& p = phdrs[i];
    if (p.p_type != PT_LOAD) continue;
    any_load = true;
    // i: the program header's index, as `readelf -l` lists them.
    if (p.p_filesz != 0 && !table_fits(p.p_offset, 1, p.p_filesz, size, &end))
      return ends_past(detail::concat("PT_LOAD segment ", i), end, size);
  }
  if (!any_load) return std::string(kTruncated) + "it has no PT_LOAD segment, so nothing to load";

  // The section header table (absent when e_shoff is 0) and the contents of the sections it lists.
  // With e_shnum == 0 the real count is in section header 0's sh_size.
  if (eh.e_shoff != 0) {
    if (eh.e_shentsize != sizeof(Elf64_Shdr))
      return detail::concat(kTruncated, "section header entries are ", eh.e_shentsize, " bytes, expected ",
                            sizeof(Elf64_Shdr));
    if (!table_fits(eh.e_shoff, 1, sizeof(Elf64_Shdr), size, &end))
      return ends_past(detail::concat("the section header table (from byte ", eh.e_shoff, ")"), end, size);
    Elf64_Shdr first;
    if (!read_at(in, eh.e_shoff, &first, sizeof first)) return "cannot read the section header table";
    const uint64_t shnum = eh.e_shnum != 0 ? eh.e_shnum : first.sh_size;
    if (!table_fits(eh.e_shoff, shnum, sizeof(Elf64_Shdr), size, &end))
      return ends_past(detail::concat("the section header table (", shnum, " entries from byte ", eh.e_shoff, ")"),
                       end, size);
    std::vector<Elf64_Shdr> sections(static_cast<size_t>(shnum));
    if (shnum && !read_at(in, eh.e_shoff, sections.data(), sections.size() * sizeof(Elf64_Shdr)))
      return "cannot read the section header table";
    for (size_t i = 0; i < sections.size(); ++i) {
      const Elf64_Shdr& s = sections[i];
      if (s.sh_type == SHT_NOBITS || s.sh_type == SHT_NULL || s.sh_size == 0) continue;
      if (!table_fits(s.sh_offset, 1, s.sh_size, size, &end))
        return ends_past(detail::concat("section ", i), end, size);
    }
  }
  return {};
}

void check_elf_shared_object(const std::filesystem::path& path) {
  const std::string problem = elf_shared_object_problem(path);
  if (!problem.empty()) fail(path.string(), ": ", problem);
}

}  // namespace rt
