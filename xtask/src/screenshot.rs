//! `cargo xtask screenshot [DIR] [-o PNG] [--window-ms MS]`: a trace's `trace.json` opened
//! in speedscope (an offline web app that reads Chrome trace-event JSON) in headless
//! Chromium, zoomed to a few steps of the engine loop, saved as a PNG (default
//! docs/timeline.png, the README's picture). DIR defaults to out/demo, made by the demo
//! first when it has no trace.json.
//!
//! Needs Chromium (`apt-get install chromium-headless-shell`) and npm, which installs
//! speedscope into .tools/node (ignored by git). The page loads the profile the way
//! speedscope's own CLI does (a script named by `#localProfilePath=`, so a file:// page
//! needs no web server); that script then zooms in with speedscope's `+` key and marks the
//! page, and the DOM dumped alongside the screenshot must carry that mark, so a blank or
//! unloaded page fails here instead of being committed.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{cmd_output, exec, fixture, setup, tools_dir, workspace_root};

/// The speedscope release the zoom below was written against (its `+` key halves the view).
const SPEEDSCOPE: &str = "speedscope@1.25.0";
const WIDTH: u32 = 1600;
const HEIGHT: u32 = 400;
/// The attribute the loader script sets on <body> once the profile is shown and zoomed.
const MARK: &str = "data-tracer-zoomed";
/// Where the loader script puts a message speedscope would show in a dialog (a dialog
/// would block headless Chromium until the timeout).
const ALERT: &str = "data-tracer-alert";
/// Parsing the demo's 3 MB trace takes a few seconds here; this is for a stuck page.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

/// What `cargo xtask screenshot` takes.
#[derive(clap::Args)]
pub struct Args {
    /// A trace's directory (default: out/demo, made by the demo first when it has no trace)
    dir: Option<PathBuf>,
    /// The PNG to write (default: docs/timeline.png, the README's picture)
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// How much of the timeline the view shows, ms
    #[arg(long, default_value_t = 6.0, value_parser = positive_ms)]
    window_ms: f64,
}

fn positive_ms(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ms) if ms > 0.0 => Ok(ms),
        _ => Err(format!("a number of ms above 0, not {value:?}")),
    }
}

pub fn run(args: Args) -> Result<()> {
    let root = workspace_root();
    let Args {
        dir,
        output,
        window_ms,
    } = args;
    let png = output.unwrap_or_else(|| root.join("docs/timeline.png"));
    let dir = match dir {
        Some(dir) => dir,
        None => {
            let demo = root.join("out/demo");
            if !demo.join("trace.json").exists() {
                eprintln!("screenshot: no out/demo/trace.json yet: running the demo first");
                setup::run()?;
                fixture::demo()?;
            }
            demo
        }
    };
    let trace = dir.join("trace.json");
    let json = std::fs::read(&trace).with_context(|| format!("reading {}", trace.display()))?;
    let span_ms = step_span_ms(&json)?;
    // speedscope opens showing the whole profile; each `+` halves the visible time.
    let zooms = (span_ms / window_ms).log2().ceil().max(0.0) as u32;

    let page = speedscope()?;
    let browser = chromium()?;
    let loader = std::env::temp_dir().join(format!("tracer-screenshot-{}.js", std::process::id()));
    std::fs::write(&loader, loader_script(&json, zooms))?;
    if let Some(parent) = png.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let url = format!(
        "file://{}#localProfilePath={}",
        page.display(),
        loader.display()
    );
    let mut child = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--hide-scrollbars",
            "--allow-file-access-from-files",
            // speedscope draws with WebGL: software rendering, no GPU needed.
            "--enable-unsafe-swiftshader",
            // Virtual time: timers and frames run as fast as the page's own work allows,
            // and the capture waits until they have run (the profile parses in this time).
            "--virtual-time-budget=30000",
            &format!("--window-size={WIDTH},{HEIGHT}"),
            "--dump-dom",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", browser.display()))?;
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let dom = std::thread::spawn(move || std::io::read_to_string(&mut stdout).unwrap_or_default());
    let log = std::thread::spawn(move || std::io::read_to_string(&mut stderr).unwrap_or_default());
    // A page stuck in a dialog or a script would hold headless Chromium forever.
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_file(&loader);
    let (dom, log) = (
        dom.join().unwrap_or_default(),
        log.join().unwrap_or_default(),
    );
    if let Some(alert) = attribute(&dom, ALERT) {
        bail!("speedscope could not show {}: {alert}", trace.display());
    }
    let Some(status) = status else {
        bail!(
            "{} did not finish in {BROWSER_TIMEOUT:?}",
            browser.display()
        );
    };
    ensure!(
        status.success() && png.exists(),
        "{} failed ({status}): {log}",
        browser.display()
    );
    ensure!(
        dom.contains(MARK),
        "speedscope did not show the profile (no {MARK} in the page): the picture would be blank"
    );
    eprintln!(
        "screenshot: {} ({}, {span_ms:.0} ms of steps zoomed {zooms}× to ~{:.1} ms)",
        png.display(),
        trace.display(),
        span_ms / f64::from(1u32 << zooms)
    );
    Ok(())
}

/// From the first step's start to the last step's end, in ms (trace.json's `ts` is µs).
fn step_span_ms(json: &[u8]) -> Result<f64> {
    let trace: serde_json::Value =
        serde_json::from_slice(json).context("trace.json is not JSON")?;
    let stamps: Vec<f64> = trace["traceEvents"]
        .as_array()
        .context("trace.json has no traceEvents")?
        .iter()
        .filter(|e| e["name"] == "step")
        .filter_map(|e| e["ts"].as_f64())
        .collect();
    let first = stamps.iter().copied().fold(f64::INFINITY, f64::min);
    let last = stamps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    ensure!(last > first, "trace.json has no steps to show");
    Ok((last - first) / 1e3)
}

/// What speedscope's CLI writes for a profile (its page calls `speedscope.loadFileFromBase64`
/// from the script), plus the zoom: `zooms` presses of `+` once the flame chart is drawn.
fn loader_script(json: &[u8], zooms: u32) -> String {
    format!(
        r#"window.alert = (message) => document.body.setAttribute("{ALERT}", message);
speedscope.loadFileFromBase64("trace.json", "{data}");
(function zoomWhenShown(tries) {{
  // The flame chart's canvas appears once the profile is parsed and laid out.
  if (document.querySelectorAll("canvas").length === 0) {{
    if (tries > 0) setTimeout(() => zoomWhenShown(tries - 1), 100);
    return;
  }}
  requestAnimationFrame(() => {{
    for (let i = 0; i < {zooms}; i++) {{
      window.dispatchEvent(new KeyboardEvent("keydown", {{ key: "+" }}));
    }}
    // Each key zooms in the next frame; mark the page a frame after those.
    requestAnimationFrame(() =>
      requestAnimationFrame(() => document.body.setAttribute("{MARK}", "{zooms}")));
  }});
}})(250);
"#,
        data = base64(json)
    )
}

/// The value of `name="…"` in the dumped DOM.
fn attribute(dom: &str, name: &str) -> Option<String> {
    let start = dom.find(&format!("{name}=\""))? + name.len() + 2;
    let len = dom[start..].find('"')?;
    Some(dom[start..start + len].to_owned())
}

/// Standard base64 with padding (the encoding `loadFileFromBase64` decodes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// speedscope's offline build, installed into .tools/node on first use.
fn speedscope() -> Result<PathBuf> {
    let prefix = tools_dir().join("node");
    let page = prefix.join("node_modules/speedscope/dist/release/index.html");
    if !page.exists() {
        eprintln!(
            "screenshot: installing {SPEEDSCOPE} into {}",
            prefix.display()
        );
        std::fs::create_dir_all(&prefix)?;
        exec(
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .arg(SPEEDSCOPE),
        )
        .context("installing speedscope needs npm (Debian: apt-get install npm)")?;
    }
    Ok(page)
}

/// A headless-capable Chromium on PATH.
fn chromium() -> Result<PathBuf> {
    for name in [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
    ] {
        if let Ok(path) = cmd_output(Command::new("sh").args(["-c", &format!("command -v {name}")]))
        {
            return Ok(PathBuf::from(path.trim()));
        }
    }
    bail!("no Chromium on PATH: `apt-get install chromium-headless-shell` (Debian) or chromium")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        // RFC 4648 §10 test vectors.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn span_runs_from_the_first_step_to_the_last() {
        let json = br#"{"traceEvents":[
            {"name":"process_name","ph":"M","pid":1},
            {"name":"step","ph":"B","ts":1000.0},{"name":"queues","ph":"C","ts":0.5},
            {"name":"step","ph":"E","ts":2500.0},{"name":"step","ph":"B","ts":3000.0},
            {"name":"step","ph":"E","ts":41000.0}]}"#;
        assert_eq!(step_span_ms(json).unwrap(), 40.0);
        assert!(step_span_ms(br#"{"traceEvents":[]}"#).is_err());
    }
}
