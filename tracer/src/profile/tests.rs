//! Unit tests of profile building: callsites, kinds, inlining, the main module.

use super::*;

fn frame(function: &str, line: u32) -> Frame {
    Frame {
        function: function.to_owned(),
        file: format!("/src/{}.go", package_of(function)),
        line,
        inlined: false,
        runtime: is_runtime(function),
    }
}

/// One pc per frame, no inlining.
fn stack(frames: Vec<Frame>) -> Vec<(u64, Arc<[Frame]>)> {
    frames
        .into_iter()
        .zip(1..)
        .map(|(f, pc)| (pc, Arc::from(vec![f])))
        .collect()
}

#[test]
fn callsite_is_the_first_frame_outside_the_runtime() {
    let frames = stack(vec![
        frame("runtime.mallocgc", 1),
        frame("runtime.growslice", 2),
        frame("main.build", 16),
        frame("main.main", 30),
    ]);
    let (site, kind, runtime_frames) = callsite_and_kind(&frames);
    assert_eq!(
        (site.function.as_str(), site.line, kind, runtime_frames),
        ("main.build", 16, Kind::Growslice, 2)
    );
}

#[test]
fn kinds_follow_the_runtime_front_door() {
    let kind = |names: &[&str]| {
        let mut frames: Vec<Frame> = names.iter().map(|n| frame(n, 1)).collect();
        frames.push(frame("main.f", 9));
        callsite_and_kind(&stack(frames)).1
    };
    assert_eq!(kind(&["runtime.mallocgc", "runtime.newobject"]), Kind::New);
    assert_eq!(kind(&["runtime.mallocgcSmallNoScanSC3"]), Kind::New);
    assert_eq!(kind(&["runtime.mallocgc", "runtime.makeslice"]), Kind::Makeslice);
    assert_eq!(
        kind(&[
            "runtime.mallocgc",
            "runtime.newarray",
            "internal/runtime/maps.newarray",
            "internal/runtime/maps.(*Map).growToSmall",
            "runtime.mapassign_faststr"
        ]),
        Kind::Makemap
    );
    assert_eq!(
        kind(&[
            "runtime.mallocgc",
            "runtime.rawstring",
            "runtime.concatstrings",
            "runtime.concatstring2"
        ]),
        Kind::String
    );
    assert_eq!(kind(&["runtime.mallocgc", "runtime.convT"]), Kind::ConvT);
    assert_eq!(kind(&["runtime.mallocgc"]), Kind::Other);
    assert_eq!(kind(&["runtime.mallocgc", "runtime.makechan"]), Kind::Other);
    // Made for the runtime while another allocation was in progress (a sudog to wait on
    // work.startSema when that allocation starts a GC cycle): charged to the same line, as
    // Go's profile does, but its own kind.
    assert_eq!(
        kind(&[
            "runtime.mallocgc",
            "runtime.newobject",
            "runtime.acquireSudog",
            "runtime.semacquire1",
            "runtime.gcStart",
            "runtime.mallocgc",
            "runtime.makeslice"
        ]),
        Kind::New
    );
}

/// Runtime functions linked into other packages keep those packages' names; gobin marks
/// them as the runtime's ([`Frame::runtime`]), and the callsite is their caller.
#[test]
fn linknamed_runtime_functions_are_runtime_frames() {
    let at = |function: &str, runtime: bool| Frame {
        function: function.to_owned(),
        file: "runtime/malloc.go".to_owned(),
        line: 1,
        inlined: false,
        runtime,
    };
    let frames = stack(vec![
        at("runtime.mallocgc", true),
        at("internal/bytealg.MakeNoZero", true),
        at("strings.(*Builder).grow", false),
        at("main.f", false),
    ]);
    let (site, kind, _) = callsite_and_kind(&frames);
    assert_eq!(
        (site.function.as_str(), kind),
        ("strings.(*Builder).grow", Kind::Makeslice)
    );
    for (linknamed, caller, want) in [
        ("reflect.unsafe_New", "reflect.New", Kind::New),
        ("reflect.unsafe_NewArray", "reflect.MakeSlice", Kind::Makeslice),
        ("reflect.makemap", "reflect.MakeMapWithSize", Kind::Makemap),
        ("reflect.mapassign_faststr0", "reflect.Value.SetMapIndex", Kind::Makemap),
    ] {
        let frames = stack(vec![
            at("runtime.mallocgc", true),
            at(linknamed, true),
            at(caller, false),
        ]);
        let (site, kind, runtime_frames) = callsite_and_kind(&frames);
        assert_eq!((site.function.as_str(), kind, runtime_frames), (caller, want, 2));
    }
}

/// Go's unwinder stops after `systemstack`: what the runtime allocates on the system stack
/// is not charged to the goroutine below it.
#[test]
fn the_walk_stops_where_go_stops() {
    struct Stops(FakeSymbols);
    impl Symbols for Stops {
        fn frames(&mut self, pc: u64, return_address: bool) -> Arc<[Frame]> {
            self.0.frames(pc, return_address)
        }
        fn type_name(&mut self, address: u64) -> Option<Arc<str>> {
            self.0.type_name(address)
        }
        fn unwind(&mut self, pc: u64) -> Unwind {
            match pc {
                0x4ff => Unwind::StopAfter,
                0x7ff => Unwind::NotGo,
                _ => Unwind::Continue,
            }
        }
    }
    let mut symbols = Stops(FakeSymbols(HashMap::from([
        (0x100, vec![frame("runtime.mallocgc", 1)]),
        (0x1ff, vec![frame("runtime.newobject", 2)]),
        (0x2ff, vec![frame("runtime.malg", 3)]),
        (0x3ff, vec![frame("runtime.newproc1", 4)]),
        (0x4ff, vec![frame("runtime.systemstack", 5)]),
        (0x5ff, vec![frame("main.grow", 64)]),
        (0x6ff, vec![frame("main.cgoCallback", 7)]),
        (0x9ff, vec![frame("main.main", 9)]),
    ])));
    let names = |locations: Vec<(u64, Arc<[Frame]>)>| -> Vec<String> {
        locations
            .iter()
            .flat_map(|(_, f)| f.iter())
            .map(|f| f.function.clone())
            .collect()
    };
    let on_system_stack = expand(&[0x100, 0x300, 0x400, 0x500, 0x600], 0x200, &mut symbols);
    assert_eq!(
        names(on_system_stack.clone()),
        [
            "runtime.mallocgc",
            "runtime.newobject",
            "runtime.malg",
            "runtime.newproc1",
            "runtime.systemstack"
        ]
    );
    let (site, kind, _) = callsite_and_kind(&on_system_stack);
    assert_eq!((site.function.as_str(), kind), ("runtime.systemstack", Kind::Other));
    // C code below a cgo callback ends the stack before it.
    let through_c = expand(&[0x100, 0x800, 0xa00], 0x700, &mut symbols);
    assert_eq!(names(through_c), ["runtime.mallocgc", "main.cgoCallback"]);
}

/// Symbols of a made-up process: pcs map to fixed frames.
struct FakeSymbols(HashMap<u64, Vec<Frame>>);

impl Symbols for FakeSymbols {
    fn frames(&mut self, pc: u64, return_address: bool) -> Arc<[Frame]> {
        let pc = if return_address { pc - 1 } else { pc };
        self.0.get(&pc).cloned().unwrap_or_default().into()
    }
    fn type_name(&mut self, address: u64) -> Option<Arc<str>> {
        (address == 0x5000).then(|| "main.Point".into())
    }
}

#[test]
fn rows_by_the_first_frame_or_by_the_main_modules() {
    // render (main) → WriteString → grow (strings) → growslice → mallocgc; and, from
    // another line of main, the same grow.
    let mut symbols = FakeSymbols(HashMap::from([
        (0x100, vec![frame("runtime.mallocgc", 1)]),
        (0x1ff, vec![frame("runtime.growslice", 2)]),
        (0x2ff, vec![frame("strings.(*Builder).grow", 3)]),
        (0x3ff, vec![frame("strings.(*Builder).WriteString", 4)]),
        (0x4ff, vec![frame("main.render", 40)]),
        (0x5ff, vec![frame("main.render", 50)]),
        (0x6ff, vec![frame("main.main", 9)]),
    ]));
    let key = |stack| AllocKey {
        stack,
        return_address: 0x200,
        type_address: 0,
        size: 16,
    };
    let counts = [(key(1), 10), (key(2), 3)];
    let stack_of = |id| {
        Some(if id == 1 {
            vec![0x100, 0x300, 0x400, 0x500, 0x700]
        } else {
            vec![0x100, 0x300, 0x400, 0x600, 0x700]
        })
    };
    let first = build(
        Mode::Exact,
        ProbeStats::default(),
        &counts,
        &InuseInput::default(),
        stack_of,
        &mut symbols,
        3,
        Grouping::First,
    );
    assert_eq!(first.callsites.len(), 1);
    let row = &first.callsites[0];
    assert_eq!(
        (&*row.key.function, row.key.line, row.allocations),
        ("strings.(*Builder).grow", 3, 13)
    );
    let user = row.user.as_ref().expect("the main module's frame");
    assert_eq!((&*user.0, user.2), ("main.render", 40), "the most frequent one");
    assert_eq!(row.via, None);

    let by_user = build(
        Mode::Exact,
        ProbeStats::default(),
        &counts,
        &InuseInput::default(),
        stack_of,
        &mut symbols,
        3,
        Grouping::User,
    );
    let rows: Vec<(&str, u32, u64)> = by_user
        .callsites
        .iter()
        .map(|c| (&*c.key.function, c.key.line, c.allocations))
        .collect();
    assert_eq!(rows, [("main.render", 40, 10), ("main.render", 50, 3)]);
    for c in &by_user.callsites {
        let via = c.via.as_ref().expect("the library line");
        assert_eq!((&*via.0, via.2), ("strings.(*Builder).grow", 3));
        assert_eq!(c.key.kind, Kind::Growslice);
        assert_eq!(c.user, None);
    }
}

#[test]
fn profile_joins_stack_return_address_and_type() {
    let mut symbols = FakeSymbols(HashMap::from([
        (0x100, vec![frame("runtime.mallocgc", 1)]),
        (0x1ff, vec![frame("runtime.newobject", 2)]),
        (0x2ff, vec![frame("main.build", 16)]),
        (0x3ff, vec![frame("main.main", 30)]),
    ]));
    let key = |size, type_address| AllocKey {
        stack: 7,
        return_address: 0x200,
        type_address,
        size,
    };
    let counts = [
        (key(24, 0x5000), 10),
        (key(24, 0), 5),
        (key(48, 0x5000), 1),
        (key(100_001, 0x6000), 3),
    ];
    let stats = ProbeStats {
        dropped_counts_map: 2,
        ..ProbeStats::default()
    };
    let profile = build(
        Mode::Exact,
        stats,
        &counts,
        &InuseInput::default(),
        |_| Some(vec![0x100, 0x300, 0x400]),
        &mut symbols,
        3,
        Grouping::First,
    );
    assert_eq!(
        profile.totals,
        Totals {
            allocations: 19,
            bytes: 24 * 15 + 48 + 300_003,
            dropped: 2
        }
    );
    assert_eq!(profile.callsites.len(), 3);
    // Sizes the histogram cannot hold exactly are still reported exactly when constant.
    let big = &profile.callsites[0];
    assert_eq!(big.key.type_name.as_deref(), Some("<unknown type at 0x6000>"));
    assert_eq!(
        (big.min_size, big.size_at_quantile(0.5), big.max_size),
        (100_001, 100_001, 100_001)
    );
    let typed = &profile.callsites[1];
    assert_eq!(&*typed.key.function, "main.build");
    assert_eq!(typed.key.line, 16);
    assert_eq!(typed.key.type_name.as_deref(), Some("main.Point"));
    assert_eq!(typed.key.kind, Kind::New);
    assert_eq!((typed.allocations, typed.bytes), (11, 24 * 10 + 48));
    assert_eq!((typed.min_size, typed.max_size), (24, 48));
    assert_eq!(typed.size_at_quantile(0.5), 24);
    assert_eq!(profile.callsites[2].key.type_name, None);
    let sample = &profile.samples[0];
    let names: Vec<&str> = sample
        .locations
        .iter()
        .flat_map(|(_, f)| f.iter())
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(
        names,
        ["runtime.mallocgc", "runtime.newobject", "main.build", "main.main"]
    );
    let user: Vec<(u64, &str)> = sample.user_frames().map(|(pc, f)| (pc, f.function.as_str())).collect();
    assert_eq!(user, [(0x300, "main.build"), (0x400, "main.main")]);
}
