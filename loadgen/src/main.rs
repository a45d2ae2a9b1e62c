//! `uringcast-load`: the companion load generator (issue #6). Until that issue lands this
//! binary only shows that it links against the shared protocol core.

fn main() {
    eprintln!(
        "uringcast-load: scenarios arrive with issue #6; this build only links the protocol core"
    );
    std::process::exit(2);
}
