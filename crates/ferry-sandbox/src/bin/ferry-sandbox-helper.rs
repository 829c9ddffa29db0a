//! The sandbox helper: locks itself down, runs the command, reports (see `ferry_sandbox`).

fn main() {
    ferry_sandbox::helper_main()
}
