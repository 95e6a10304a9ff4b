//! `quit`: acknowledge; the session closes the connection after flushing.

use ferry_proto::Reply;

pub fn run() -> Reply {
    Reply::Quit
}
