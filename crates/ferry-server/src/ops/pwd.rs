//! `pwd`: the session's working directory.

use ferry_proto::Reply;

use crate::session::Session;

pub fn run(s: &Session) -> Reply {
    Reply::Pwd {
        cwd: s.cwd.display(),
    }
}
