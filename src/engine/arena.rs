//! The arena: one 64-byte-aligned allocation, made once when a session is created, carved into
//! named regions by a [`MemoryPlan`]. Nothing in it is ever resized or moved.

use std::fmt;

use bytemuck::{Pod, Zeroable};

/// One cache line of floats: the arena's unit, so every region starts 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Line([f32; 16]);

const LINE_FLOATS: usize = 16;

/// One named region of the arena.
#[derive(Clone, Debug)]
pub struct Region {
    /// The region's name, as the memory plan prints it.
    pub name: &'static str,
    /// The region's shape, for the printed plan, e.g. `[layer, kv_head, position, head_dim]`.
    pub shape: String,
    /// Offset in floats from the arena's start (a multiple of 16).
    pub offset: usize,
    /// Length in floats (4 bytes each).
    pub floats: usize,
}

impl Region {
    /// The region's size in bytes.
    pub fn bytes(&self) -> usize {
        self.floats * 4
    }
}

/// The arena's layout: every region and the total.
#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    regions: Vec<Region>,
    total_floats: usize,
}

/// The arena could not be planned or allocated.
#[derive(Debug)]
pub enum ArenaError {
    /// A region's size overflows `usize`.
    Overflow {
        /// The region.
        region: &'static str,
    },
    /// The allocation failed or would exceed the memory available.
    TooLarge {
        /// The bytes asked for.
        bytes: u128,
        /// What the machine (or its cgroup) has left, when known.
        available: Option<u64>,
    },
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArenaError::Overflow { region } => {
                write!(f, "arena region `{region}` is too large: its size overflows usize")
            }
            ArenaError::TooLarge { bytes, available: Some(a) } => write!(
                f,
                "the arena needs {bytes} bytes ({:.2} GiB) but only {a} bytes ({:.2} GiB) of memory are available; lower --ctx",
                *bytes as f64 / (1u64 << 30) as f64,
                *a as f64 / (1u64 << 30) as f64
            ),
            ArenaError::TooLarge { bytes, available: None } => {
                write!(f, "the arena needs {bytes} bytes and could not be allocated; lower --ctx")
            }
        }
    }
}

impl std::error::Error for ArenaError {}

impl MemoryPlan {
    /// Adds a region of `floats` floats (`None` means its size overflowed).
    pub fn push(
        &mut self,
        name: &'static str,
        shape: impl Into<String>,
        floats: Option<usize>,
    ) -> Result<(), ArenaError> {
        let floats = floats.ok_or(ArenaError::Overflow { region: name })?;
        let padded = floats
            .checked_add(LINE_FLOATS - 1)
            .map(|v| v / LINE_FLOATS * LINE_FLOATS)
            .ok_or(ArenaError::Overflow { region: name })?;
        let offset = self.total_floats;
        self.total_floats = offset
            .checked_add(padded)
            .ok_or(ArenaError::Overflow { region: name })?;
        if self.total_floats.checked_mul(4).is_none() {
            return Err(ArenaError::Overflow { region: name });
        }
        self.regions.push(Region {
            name,
            shape: shape.into(),
            offset,
            floats,
        });
        Ok(())
    }

    /// The regions, in arena order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The region called `name`, if the plan has one.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Total bytes, including the padding that aligns each region.
    pub fn total_bytes(&self) -> usize {
        self.total_floats * 4
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<20} {:>14}  shape", "region", "bytes")?;
        for r in &self.regions {
            writeln!(f, "{:<20} {:>14}  {}", r.name, r.bytes(), r.shape)?;
        }
        write!(
            f,
            "{:<20} {:>14}  ({:.1} MiB, one allocation)",
            "total",
            self.total_bytes(),
            self.total_bytes() as f64 / (1 << 20) as f64
        )
    }
}

/// The one allocation behind a [`MemoryPlan`].
pub struct Arena {
    lines: Vec<Line>,
}

/// Bytes of memory available to this process, if known: `MemAvailable` from /proc/meminfo,
/// lowered to the headroom (`memory.max - memory.current`) of this process's cgroup v2 and
/// each of its ancestors that has a numeric `memory.max` ("max" is no limit).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem_available(&t));
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|t| parse_cgroup_v2_path(&t).map(str::to_owned))
        .and_then(|path| cgroup_headroom(std::path::Path::new("/sys/fs/cgroup"), &path));
    min_known(meminfo, cgroup)
}

/// `MemAvailable` of /proc/meminfo text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The cgroup v2 path (the `0::<path>` line) of /proc/self/cgroup text.
pub fn parse_cgroup_v2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .filter(|p| p.starts_with('/'))
}

/// A cgroup v2 `memory.max` value: `Some(bytes)` for a number, `None` for "max" (no limit) or
/// anything unreadable.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        t => t.parse().ok(),
    }
}

/// Room left under a limit: `max - current` (0 when over), or `max` when `current` is unknown.
pub fn limit_headroom(max: u64, current: Option<u64>) -> u64 {
    max.saturating_sub(current.unwrap_or(0))
}

/// The smaller of two optional amounts, or whichever is known.
pub fn min_known(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The least headroom over the cgroup `path` (as in /proc/self/cgroup) under the cgroup2 mount
/// `root` and its ancestors up to `root`; `None` when none of them sets a numeric limit.
fn cgroup_headroom(root: &std::path::Path, path: &str) -> Option<u64> {
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut best = None;
    loop {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if let Some(max) = read("memory.max").and_then(|t| parse_memory_max(&t)) {
            let current = read("memory.current").and_then(|t| t.trim().parse().ok());
            best = min_known(best, Some(limit_headroom(max, current)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return best;
        }
    }
}

impl Arena {
    /// Allocates and zeroes the arena for `plan`. Fails fast, with the size, if it exceeds the
    /// memory available.
    pub fn new(plan: &MemoryPlan) -> Result<Arena, ArenaError> {
        let bytes = plan.total_bytes();
        let available = available_memory();
        if let Some(a) = available {
            if bytes as u64 > a {
                return Err(ArenaError::TooLarge {
                    bytes: bytes as u128,
                    available,
                });
            }
        }
        let n = plan.total_floats / LINE_FLOATS;
        let mut lines = Vec::new();
        lines
            .try_reserve_exact(n)
            .map_err(|_| ArenaError::TooLarge {
                bytes: bytes as u128,
                available,
            })?;
        lines.resize(n, Line([0.0; LINE_FLOATS]));
        Ok(Arena { lines })
    }

    /// The whole arena as floats.
    pub fn floats_mut(&mut self) -> &mut [f32] {
        bytemuck::cast_slice_mut(&mut self.lines)
    }

    /// Address and length in bytes, to show the arena never moves.
    pub fn address(&self) -> (usize, usize) {
        (self.lines.as_ptr() as usize, self.lines.len() * 64)
    }
}

/// The size of one region, as a plan needs it: a shape for the printed plan and a length in
/// floats (`None` when computing it overflowed).
#[derive(Clone, Debug)]
pub struct RegionSpec {
    /// The shape, in words, as the memory plan prints it.
    pub shape: String,
    /// Its size in f32s; `None` when that size overflows `usize` (planning then fails, naming the region).
    pub floats: Option<usize>,
}

impl RegionSpec {
    /// A region of `floats` f32s (`None`: overflowed) described by `shape`.
    pub fn new(shape: impl Into<String>, floats: Option<usize>) -> RegionSpec {
        RegionSpec {
            shape: shape.into(),
            floats,
        }
    }
}

/// Hands out a plan's regions in order, each as its own `&mut` slice of the arena. No
/// allocation; used by the structs [`arena_regions!`](crate::arena_regions) declares.
pub struct Carver<'a, 'p> {
    rest: &'a mut [f32],
    consumed: usize,
    regions: std::slice::Iter<'p, Region>,
}

impl<'a, 'p> Carver<'a, 'p> {
    /// Starts carving `buf`, which must be at least `plan.floats()` long, in the order of `plan`.
    pub fn new(buf: &'a mut [f32], plan: &'p MemoryPlan) -> Carver<'a, 'p> {
        Carver {
            rest: buf,
            consumed: 0,
            regions: plan.regions.iter(),
        }
    }

    /// The next region, which must be called `name` (the struct and the plan were built from
    /// the same declaration, so a mismatch is a bug).
    pub fn next(&mut self, name: &'static str) -> &'a mut [f32] {
        let r = self
            .regions
            .next()
            .expect("carve: the plan has fewer regions");
        assert_eq!(
            r.name, name,
            "carve: the plan's regions are in another order"
        );
        let skip = r.offset - self.consumed;
        let tail = std::mem::take(&mut self.rest);
        let (region, after) = tail[skip..].split_at_mut(r.floats);
        self.rest = after;
        self.consumed = r.offset + r.floats;
        region
    }
}

/// Declares an arena layout by name: `$Spec` holds one [`RegionSpec`] per region (what a plan
/// is built from), `$Bufs<'a>` one `&'a mut [f32]` per region (what the arena is carved into).
/// Both come from this one list, so the plan and the borrowed regions always agree, field by
/// field, and code names the region it uses instead of counting positions.
#[macro_export]
macro_rules! arena_regions {
    (
        $(#[$sm:meta])* $vis:vis struct $Spec:ident;
        $(#[$bm:meta])* $bvis:vis struct $Bufs:ident;
        { $( $(#[$fm:meta])* $field:ident : $name:literal ),* $(,)? }
    ) => {
        $(#[$sm])*
        $vis struct $Spec {
            $( $(#[$fm])* pub $field: $crate::engine::arena::RegionSpec, )*
        }

        $(#[$bm])*
        $bvis struct $Bufs<'a> {
            $( $(#[$fm])* pub $field: &'a mut [f32], )*
        }

        impl $Spec {
            /// The plan of these regions, in declaration order.
            pub fn plan(self) -> Result<$crate::engine::arena::MemoryPlan, $crate::engine::arena::ArenaError> {
                let mut plan = $crate::engine::arena::MemoryPlan::default();
                $( plan.push($name, self.$field.shape, self.$field.floats)?; )*
                Ok(plan)
            }
        }

        impl<'a> $Bufs<'a> {
            /// The regions of `plan` (made by the matching spec's `plan`) in `buf`, the
            /// arena allocated for it.
            pub fn carve(buf: &'a mut [f32], plan: &$crate::engine::arena::MemoryPlan) -> $Bufs<'a> {
                let mut carver = $crate::engine::arena::Carver::new(buf, plan);
                $( let $field = carver.next($name); )*
                $Bufs { $($field),* }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::arena_regions! {
        struct TestSpec;
        struct TestBufs;
        { a: "a", b: "b", c: "c" }
    }

    #[test]
    fn plan_aligns_and_carves_by_name() {
        let p = TestSpec {
            a: RegionSpec::new("[3]", Some(3)),
            b: RegionSpec::new("[20]", Some(20)),
            c: RegionSpec::new("[0]", Some(0)),
        }
        .plan()
        .unwrap();
        assert_eq!(p.total_bytes(), (16 + 32) * 4);
        assert_eq!(p.region("b").map(|r| r.offset), Some(16));
        let mut arena = Arena::new(&p).unwrap();
        let base = arena.address().0;
        let TestBufs { a, b, c } = TestBufs::carve(arena.floats_mut(), &p);
        assert_eq!((a.len(), b.len(), c.len()), (3, 20, 0));
        assert_eq!(a.as_ptr() as usize, base);
        assert_eq!(b.as_ptr() as usize, base + 64);
        assert_eq!(base % 64, 0);
        a[2] = 1.0;
        b[19] = 2.0;
        assert!(p.to_string().contains("total"));
    }

    #[test]
    #[should_panic(expected = "another order")]
    fn carving_a_foreign_plan_is_caught() {
        let mut p = MemoryPlan::default();
        p.push("b", "[1]", Some(1)).unwrap();
        p.push("a", "[1]", Some(1)).unwrap();
        p.push("c", "[1]", Some(1)).unwrap();
        let mut arena = Arena::new(&p).unwrap();
        let _ = TestBufs::carve(arena.floats_mut(), &p);
    }

    #[test]
    fn overflow_and_too_large_are_errors() {
        let mut p = MemoryPlan::default();
        assert!(matches!(
            p.push("x", "", None),
            Err(ArenaError::Overflow { region: "x" })
        ));
        assert!(matches!(
            p.push("y", "", Some(usize::MAX / 2)),
            Err(ArenaError::Overflow { .. })
        ));
        let mut p = MemoryPlan::default();
        p.push("huge", "", Some(1 << 45)).unwrap();
        let e = Arena::new(&p).err().expect("a 128 TiB arena must fail");
        assert!(e.to_string().contains(&(1u128 << 47).to_string()), "{e}");
    }

    #[test]
    fn parses_meminfo_and_cgroup_files() {
        let meminfo =
            "MemTotal:       32000000 kB\nMemFree:  100 kB\nMemAvailable:   23962108 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(23_962_108 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);

        let hybrid = "9:name=systemd:/\n4:memory:/process_api/5a6d\n1:cpu:/\n0::/\n";
        assert_eq!(parse_cgroup_v2_path(hybrid), Some("/"));
        let v2 = "0::/user.slice/user-1000.slice/session-2.scope\n";
        assert_eq!(
            parse_cgroup_v2_path(v2),
            Some("/user.slice/user-1000.slice/session-2.scope")
        );
        assert_eq!(parse_cgroup_v2_path("4:memory:/x\n"), None, "v1 only");

        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("8589934592\n"), Some(8 << 30));
        assert_eq!(parse_memory_max(""), None);

        assert_eq!(limit_headroom(8 << 30, Some(3 << 30)), 5 << 30);
        assert_eq!(limit_headroom(1 << 30, Some(2 << 30)), 0, "over the limit");
        assert_eq!(limit_headroom(1 << 30, None), 1 << 30);

        assert_eq!(min_known(Some(5), Some(3)), Some(3));
        assert_eq!(min_known(Some(5), None), Some(5));
        assert_eq!(min_known(None, Some(3)), Some(3));
        assert_eq!(min_known(None, None), None);
    }

    #[test]
    fn cgroup_headroom_takes_the_tightest_ancestor() {
        let root = std::env::temp_dir().join(format!("qwenrt-cgroup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let leaf = root.join("a/b");
        std::fs::create_dir_all(&leaf).unwrap();
        assert_eq!(cgroup_headroom(&root, "/a/b"), None, "no files: no limit");
        std::fs::write(leaf.join("memory.max"), "max\n").unwrap();
        std::fs::write(leaf.join("memory.current"), "100\n").unwrap();
        assert_eq!(cgroup_headroom(&root, "/a/b"), None, "\"max\": no limit");
        std::fs::write(root.join("a/memory.max"), "1000\n").unwrap();
        std::fs::write(root.join("a/memory.current"), "400\n").unwrap();
        assert_eq!(
            cgroup_headroom(&root, "/a/b"),
            Some(600),
            "the parent's limit applies"
        );
        std::fs::write(leaf.join("memory.max"), "300\n").unwrap();
        assert_eq!(cgroup_headroom(&root, "/a/b"), Some(200));
        assert_eq!(cgroup_headroom(&root, "/"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
