//! PostgreSQL-only cases, against the real server.

use super::*;
