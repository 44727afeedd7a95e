//! jepsen-lite: see README.md ("Breaking it on purpose").

fn main() {
    eprintln!("jepsen-lite: not built yet");
    std::process::exit(2);
}
