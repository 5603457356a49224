//! Runs seed files (or generated scenarios) several times in one process, spawning unrelated
//! tokio tasks in between (which shifts tokio's process-wide task ids), and reports any run
//! whose history digest differs from the first.
use herald_properties::generators::{generate, GeneratorSettings, Size};

fn main() {
    let mut cases: Vec<(String, herald_properties::scenario::Scenario, u64)> = Vec::new();
    for path in std::env::args().skip(1) {
        let file = herald_properties::seed_file::SeedFile::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cases.push((path, file.scenario, file.seed));
    }
    if cases.is_empty() {
        for seed in 0..60u64 {
            let size = [Size::Tiny, Size::Small, Size::Medium][(seed % 3) as usize];
            cases.push((
                format!("generated {seed}"),
                generate(GeneratorSettings { size, swarm: true }, seed),
                seed,
            ));
        }
    }
    let mut mismatches = 0;
    for (name, scenario, seed) in &cases {
        let mut first = None;
        for round in 0..3 {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                for _ in 0..round * 7 + 1 {
                    tokio::spawn(async {}).await.unwrap();
                }
            });
            let trace = std::env::var("TRACE_DIFF").is_ok();
            let output = herald_sim::run_with(
                scenario,
                *seed,
                herald_sim::WorldOptions {
                    trace,
                    ..Default::default()
                },
            );
            if trace {
                std::fs::write(format!("/tmp/trace-{round}.txt"), &output.trace).unwrap();
            }
            let history = output.history;
            match &first {
                None => first = Some(history),
                Some(h) if h.digest() != history.digest() => {
                    mismatches += 1;
                    if std::env::var("DUMP").is_ok() {
                        std::fs::write("/tmp/hA.json", serde_json::to_string_pretty(&h.entries).unwrap()).unwrap();
                        std::fs::write("/tmp/hB.json", serde_json::to_string_pretty(&history.entries).unwrap())
                            .unwrap();
                        std::process::exit(1);
                    }
                    let at = h
                        .entries
                        .iter()
                        .zip(&history.entries)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    println!("MISMATCH {name} round {round} at entry {at}:");
                    for i in at.saturating_sub(3)..(at + 3) {
                        if let (Some(a), Some(b)) = (h.entries.get(i), history.entries.get(i)) {
                            println!("  A {} {}", a.at_ms, serde_json::to_string(&a.what).unwrap());
                            println!("  B {} {}", b.at_ms, serde_json::to_string(&b.what).unwrap());
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }
    println!("{} cases, {mismatches} mismatches", cases.len());
}
