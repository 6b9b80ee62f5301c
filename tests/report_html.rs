//! The run report in a real browser: a CI-sized digits search writes report.html, headless
//! Chromium renders it (screenshot and DOM), and the page shows its sections, its tables and
//! its SVG plots; `rl-darts report` on a stopped pipeline (no comparison yet) names what is
//! missing. Without a Chromium binary the browser test says so and passes (setup installs
//! Debian's `chromium`, so CI runs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use rl_darts::logging::TensorBoardSink;
use rl_darts::train::health::HealthConfig;
use rl_darts::train::run_dir::RunDir;

const SECTIONS: [&str; 7] = [
    "Command and configuration",
    "Result",
    "Learning curves",
    "Derived cells",
    "Alpha trajectories",
    "Search health",
    "Speed and memory",
];

fn tiny_search(dir: &Path, epochs: usize, max_epochs: Option<usize>) {
    let mut c = common::digits::tiny_digits_config();
    c.search.epochs = epochs;
    c.search.health = HealthConfig {
        power_iterations: 5,
        ..HealthConfig::every(8)
    };
    let run_dir = RunDir::create_at(dir).unwrap();
    let mut sink = TensorBoardSink::create(run_dir.tensorboard_dir()).unwrap();
    common::digits::search_in(&c, &run_dir, false, max_epochs, &mut sink);
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

fn headless(browser: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

#[test]
fn a_search_report_renders_its_sections_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    tiny_search(&run, 2, None);
    let report = run.join("report.html");
    let page = std::fs::read_to_string(&report).expect("the search wrote report.html");
    assert!(!page.contains("<script"), "no JavaScript");
    // Self-contained: nothing is fetched (SVG's xmlns URI is a name, not a fetch).
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("<link")
    );

    let Some(browser) = chromium() else {
        eprintln!(
            "skipped the browser check: no chromium on PATH (scripts/setup.sh installs Debian's \
             `chromium`); report.html was written and parsed as text only"
        );
        return;
    };
    let (width, height) = (1280u32, 2400u32);
    let shot = dir.path().join("report.png");
    let profile = dir.path().join("profile");
    let out = headless(&browser, &profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    common::assert_success(&out);
    let png = std::fs::File::open(&shot).expect("screenshot written");
    let info = png::Decoder::new(png).read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (width, height));

    let out = headless(&browser, &profile)
        .arg("--dump-dom")
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    common::assert_success(&out);
    let dom = String::from_utf8_lossy(&out.stdout);
    for title in SECTIONS {
        assert!(
            dom.contains(&format!("<h2>{title}</h2>")),
            "section {title} not rendered"
        );
    }
    // The result table: a header and one row per summary field.
    let result = &dom[dom.find("id=\"results\"").unwrap()..];
    let rows = result[..result.find("</table>").unwrap()]
        .matches("<tr>")
        .count();
    assert!(rows >= 5, "{rows} result rows");
    // Plots: accuracy, loss, 2 cells, 2 trajectories, 3 health charts (each inline <svg>).
    let svgs = dom.matches("<svg").count();
    assert!(svgs >= 9, "{svgs} svg elements");
    assert!(dom.contains("health/eigenvalue"), "health curve legend");
    // Speed and memory of a vision search: images per second and peak memory per epoch.
    let speed = &dom[dom.find("id=\"speed\"").expect("speed section")..];
    for legend in ["search/images_per_sec", "perf/peak_rss_gib"] {
        assert!(speed.contains(legend), "speed section lacks {legend}");
    }
    assert!(
        !dom.contains("class=\"missing\""),
        "a complete search misses nothing"
    );
}

/// `rl-darts report` on a pipeline stopped during its search (no retrain, no comparison yet):
/// the page is written and names what is missing.
#[test]
fn report_command_on_a_stopped_pipeline_names_the_missing_parts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pipeline");
    std::fs::create_dir_all(&root).unwrap();
    // A search phase stopped after one of its two epochs.
    tiny_search(&root.join("search"), 2, Some(1));
    std::fs::write(root.join("pipeline.json"), "{}").unwrap();
    std::fs::copy(root.join("search/config.toml"), root.join("config.toml")).unwrap();
    let out = common::rl_darts()
        .arg("report")
        .arg(&root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("not in the run yet"), "{stdout}");
    let page = std::fs::read_to_string(root.join("report.html")).unwrap();
    assert!(page.contains("Incomplete"));
    for part in [
        "comparison.json is not written yet",
        "the retrain phase (not started)",
        "the baseline phase (not started)",
    ] {
        assert!(page.contains(part), "{part}");
    }
    // What the stopped search has is shown.
    assert!(page.contains("<h2>Alpha trajectories</h2>") && page.matches("<svg").count() >= 2);
}
