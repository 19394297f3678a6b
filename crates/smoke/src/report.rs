//! Where smoke says what happens, line by line, as it happens (stdout in the binary, a buffer in
//! tests). A closed stdout is no reason to stop following the job, so write errors are dropped.

use std::fmt::Display;
use std::io::Write;

pub struct Report<'a> {
    out: &'a mut dyn Write,
}

impl<'a> Report<'a> {
    pub fn new(out: &'a mut dyn Write) -> Self {
        Self { out }
    }

    pub fn line(&mut self, text: impl Display) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }
}
