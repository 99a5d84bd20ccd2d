//! MySQL's SQL dialect onto SQLite, the state machine of every shard group.
//!
//! [`translate`] parses one MySQL statement text (sqlparser's MySQL dialect) into [`Plan`]s:
//! SQL for SQLite, or an instruction for the session layer (`USE`, `SET`, `SHOW`, transaction
//! control). What MySQL and SQLite share passes through; what differs is rewritten:
//!
//! | MySQL | SQLite |
//! |---|---|
//! | `CREATE TABLE` with MySQL types, `AUTO_INCREMENT`, `KEY`/`INDEX`, `CHARSET`, `COLLATE`, `COMMENT`, `ENGINE` | the same columns with their MySQL type names as declared types (SQLite derives affinity from them), the auto-increment column as the `INTEGER PRIMARY KEY` rowid alias, inline indexes as `CREATE INDEX`; storage options dropped |
//! | `INSERT … ON DUPLICATE KEY UPDATE c = VALUES(c)` | `INSERT … ON CONFLICT DO UPDATE SET c = excluded.c` |
//! | `INSERT IGNORE` | `INSERT OR IGNORE` |
//! | `@@version`, `@@session.x`, `DATABASE()`, `LAST_INSERT_ID()`, `VERSION()`, `CONNECTION_ID()` | literals from the session |
//! | `"text"` (a string in MySQL's default mode) | `'text'` (SQLite would take a matching column name) |
//!
//! Anything else MySQL-only is refused with MySQL error 1235 naming the construct, and a
//! statement that does not parse gets 1064 with the parser's message: never a guess.
//!
//! **Databases.** A MySQL database (schema) is a namespace of tables; here all of them live in
//! one SQLite database, each table under the single identifier `"db.table"` (and each index as
//! `"db.table.index"`, index names being per table in MySQL). Every table reference is
//! qualified with the session's database unless it names one, and keeps its MySQL name as an
//! alias, so `t.col` still resolves. The databases themselves are rows of `_quartet_schemata`,
//! written through the group like any data; `information_schema.tables`, `.columns` and
//! `.schemata` are views over SQLite's catalog in the same naming.

use std::fmt::Write as _;
use std::ops::ControlFlow;

use sqlparser::ast::{
    ColumnOption, CreateTable, DataType, Expr, FunctionArguments, Ident, ObjectName, OnConflict,
    OnConflictAction, OnInsert, SelectItem, SetExpr, ShowStatementFilter, SqliteOnConflict,
    Statement, TableConstraint, Value, ValueWithSpan, VisitMut, VisitorMut,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A MySQL error: number, SQLSTATE and message, as the wire protocol sends them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ERROR {code} ({sqlstate}): {message}")]
pub struct MysqlError {
    /// MySQL's error number, e.g. 1064.
    pub code: u16,
    /// The SQLSTATE, e.g. `42000`.
    pub sqlstate: &'static str,
    /// What went wrong.
    pub message: String,
}

impl MysqlError {
    /// 1064: the statement does not parse.
    pub fn syntax(message: impl Into<String>) -> Self {
        Self {
            code: 1064,
            sqlstate: "42000",
            message: message.into(),
        }
    }

    /// 1065: no statement in the text (nothing, or only comments), as MySQL answers.
    pub fn empty_query() -> Self {
        Self {
            code: 1065,
            sqlstate: "42000",
            message: "Query was empty".into(),
        }
    }

    /// 1235: a construct this server does not support, named.
    pub fn unsupported(construct: impl std::fmt::Display) -> Self {
        Self {
            code: 1235,
            sqlstate: "42000",
            message: format!("This version of Quartet doesn't yet support '{construct}'"),
        }
    }
}

/// What the session layer knows when a statement is translated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Context {
    /// The current database (`USE`), if any.
    pub database: Option<String>,
    /// The last AUTO_INCREMENT value this session generated.
    pub last_insert_id: u64,
    /// Session and global variables (`@@name` and `@@session.name` read these), lower-case names.
    pub variables: Vec<(String, String)>,
}

/// One session-level assignment from a `SET` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `SET NAMES charset [COLLATE collation]`.
    Names {
        /// The character set.
        charset: String,
    },
    /// `SET [SESSION|@@session.]name = value` (value as written, literals unquoted).
    Variable {
        /// Lower-case variable name.
        name: String,
        /// The value.
        value: String,
    },
}

/// The `SHOW` statements the session layer answers from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Show {
    /// `SHOW DATABASES`.
    Databases,
    /// `SHOW [FULL] TABLES [FROM db]`.
    Tables {
        /// The database, if named.
        database: Option<String>,
        /// `FULL` adds the table type column.
        full: bool,
    },
    /// `SHOW [FULL] COLUMNS FROM t`.
    Columns {
        /// The database, if named.
        database: Option<String>,
        /// The table.
        table: String,
    },
    /// `SHOW CREATE TABLE t`.
    CreateTable {
        /// The database, if named.
        database: Option<String>,
        /// The table.
        table: String,
    },
    /// `SHOW [SESSION|GLOBAL] VARIABLES [LIKE pattern]`.
    Variables {
        /// The `LIKE` pattern, if any.
        like: Option<String>,
    },
}

/// Transaction control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transaction {
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
}

/// What to do for one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run these statements on SQLite, in order, as one unit.
    Sqlite {
        /// The SQLite statements.
        statements: Vec<String>,
        /// Whether it only reads.
        read_only: bool,
    },
    /// Change the session.
    Set(Vec<Setting>),
    /// `USE db`.
    Use(String),
    /// Answer from the catalog.
    Show(Show),
    /// `CREATE DATABASE [IF NOT EXISTS] name`.
    CreateDatabase {
        /// The database.
        name: String,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
    },
    /// `DROP DATABASE [IF EXISTS] name`.
    DropDatabase {
        /// The database.
        name: String,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// Transaction control.
    Transaction(Transaction),
    /// `KILL [QUERY | CONNECTION] id`: stop a session's running read, or end the session.
    Kill {
        /// The connection id (`CONNECTION_ID()`, the handshake's thread id).
        id: u64,
        /// `KILL QUERY`: only the running read.
        query_only: bool,
    },
}

/// Translates one MySQL statement text (possibly several statements separated by `;`).
pub fn translate(sql: &str, context: &Context) -> Result<Vec<Plan>, MysqlError> {
    let trimmed = sql.trim().trim_end_matches(';').trim();
    if trimmed.is_empty() {
        return Err(MysqlError::empty_query());
    }
    // Drivers send `SET a = 1, NAMES utf8mb4, b = 2`, which sqlparser refuses; SET is simple
    // enough to read here.
    if let Some(rest) = trimmed
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("set "))
        .and_then(|_| trimmed.get(4..))
    {
        return parse_set(rest).map(|s| vec![Plan::Set(s)]);
    }
    check_nesting(trimmed)?;
    let statements = Parser::parse_sql(&MySqlDialect {}, trimmed)
        .map_err(|e| MysqlError::syntax(e.to_string()))?;
    // Only comments: no plan would mean no answer at all, and the client would wait for one.
    if statements.is_empty() {
        return Err(MysqlError::empty_query());
    }
    statements.into_iter().map(|s| plan(s, context)).collect()
}

/// The deepest expression a statement may nest, by [`check_nesting`]'s count. Parsing,
/// rewriting and printing a statement recurse once per level, so without a bound one statement
/// of `1+1+…` (60 KB) overflows a thread's stack and takes the replica down. SQLite refuses
/// expressions deeper than 1000 anyway; the count errs on the high side, hence the margin.
pub const MAX_NESTING: usize = 2000;

/// Whether `token` may add a level to the expression around it: operators, and the keywords
/// that act as operators. Names, literals and punctuation do not.
fn nests(token: &Token) -> bool {
    match token {
        Token::Word(word) => matches!(
            word.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::BETWEEN
                | Keyword::DIV
                | Keyword::MOD
                | Keyword::CASE
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::IN
        ),
        Token::DoubleEq
        | Token::Eq
        | Token::Neq
        | Token::Lt
        | Token::Gt
        | Token::LtEq
        | Token::GtEq
        | Token::Spaceship
        | Token::Plus
        | Token::Minus
        | Token::Mul
        | Token::Div
        | Token::DuckIntDiv
        | Token::Mod
        | Token::StringConcat
        | Token::Ampersand
        | Token::Pipe
        | Token::Caret
        | Token::ShiftLeft
        | Token::ShiftRight
        | Token::Tilde
        | Token::ExclamationMark
        | Token::Assignment
        | Token::Arrow
        | Token::LongArrow
        | Token::DoubleColon => true,
        _ => false,
    }
}

/// Refuses a statement whose expressions nest deeper than [`MAX_NESTING`], before it is
/// parsed. The count is an upper bound computed over tokens without recursion: at each open
/// parenthesis, the operators of the comma-separated item in progress, plus one per
/// parenthesis. A statement shorter than the limit cannot reach it and is not counted.
fn check_nesting(sql: &str) -> Result<(), MysqlError> {
    if sql.len() <= MAX_NESTING {
        return Ok(());
    }
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize()
        .map_err(|e| MysqlError::syntax(e.to_string()))?;
    let mut levels: Vec<usize> = vec![0];
    let mut depth = 0usize;
    for token in &tokens {
        match token {
            Token::LParen => {
                levels.push(0);
                depth += 1;
            }
            Token::RParen if levels.len() > 1 => {
                depth -= levels.pop().unwrap_or(0) + 1;
            }
            Token::Comma | Token::SemiColon => {
                if let Some(top) = levels.last_mut() {
                    depth -= *top;
                    *top = 0;
                }
            }
            other if nests(other) => {
                if let Some(top) = levels.last_mut() {
                    *top += 1;
                    depth += 1;
                }
            }
            _ => {}
        }
        if depth > MAX_NESTING {
            return Err(MysqlError {
                code: 1436,
                sqlstate: "HY000",
                message: format!(
                    "Thread stack overrun: the statement nests expressions more than {MAX_NESTING} levels deep (operators in one chain, or parentheses); split it, or use IN (...) for long lists"
                ),
            });
        }
    }
    Ok(())
}

/// Names a substituted select item after its original text, as MySQL does
/// (`SELECT @@version` returns a column called `@@version`, not the version string).
fn keep_column_names(statement: &mut Statement) {
    let Statement::Query(query) = statement else {
        return;
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    for item in &mut select.projection {
        if let SelectItem::UnnamedExpr(expr) = item {
            let text = expr.to_string();
            let upper = text.to_uppercase();
            if [
                "@@",
                "DATABASE(",
                "SCHEMA(",
                "LAST_INSERT_ID(",
                "VERSION(",
                "CONNECTION_ID(",
            ]
            .iter()
            .any(|marker| upper.contains(marker))
            {
                *item = SelectItem::ExprWithAlias {
                    expr: expr.clone(),
                    alias: Ident::with_quote('`', text),
                };
            }
        }
    }
}

/// The database that holds MySQL's catalog views.
pub const INFORMATION_SCHEMA: &str = "information_schema";

/// The table keeping the list of databases (replicated like user data).
pub const SCHEMATA_TABLE: &str = "_quartet_schemata";

/// The SQLite name of MySQL table `table` in database `db`.
pub fn sqlite_table(db: &str, table: &str) -> String {
    format!("{db}.{table}")
}

fn no_database() -> MysqlError {
    MysqlError {
        code: 1046,
        sqlstate: "3D000",
        message: "No database selected".into(),
    }
}

/// The (database, table) a MySQL table name means in `context`.
fn resolve(name: &ObjectName, context: &Context) -> Result<(String, String), MysqlError> {
    let parts: Vec<&str> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(|i| i.value.as_str()))
        .collect::<Option<_>>()
        .ok_or_else(|| MysqlError::unsupported(format!("the table name {name}")))?;
    let (db, table) = match parts.as_slice() {
        [table] => (
            context.database.clone().ok_or_else(no_database)?,
            (*table).to_owned(),
        ),
        [db, table] => ((*db).to_owned(), (*table).to_owned()),
        _ => return Err(MysqlError::unsupported(format!("the table name {name}"))),
    };
    if db.eq_ignore_ascii_case(INFORMATION_SCHEMA) {
        return Ok((INFORMATION_SCHEMA.to_owned(), table.to_lowercase()));
    }
    Ok((db, table))
}

/// The SQLite object name for a MySQL table name.
fn qualified(name: &ObjectName, context: &Context) -> Result<(ObjectName, String), MysqlError> {
    let (db, table) = resolve(name, context)?;
    Ok((
        ObjectName::from(vec![Ident::with_quote('"', sqlite_table(&db, &table))]),
        table,
    ))
}

/// Qualifies every table a statement reads or writes (see the module notes on databases).
struct Qualify<'a> {
    context: &'a Context,
    /// Names of common table expressions in scope: not tables.
    ctes: Vec<String>,
    error: Option<MysqlError>,
}

impl VisitorMut for Qualify<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut sqlparser::ast::Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.ctes
                .extend(with.cte_tables.iter().map(|c| c.alias.name.value.clone()));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(
        &mut self,
        factor: &mut sqlparser::ast::TableFactor,
    ) -> ControlFlow<()> {
        if let sqlparser::ast::TableFactor::Table { name, alias, .. } = factor {
            if name.0.len() == 1
                && name.0[0]
                    .as_ident()
                    .is_some_and(|i| self.ctes.contains(&i.value))
            {
                return ControlFlow::Continue(());
            }
            match qualified(name, self.context) {
                Ok((sqlite, table)) => {
                    *name = sqlite;
                    if alias.is_none() {
                        *alias = Some(sqlparser::ast::TableAlias {
                            explicit: true,
                            name: Ident::with_quote('`', table),
                            columns: Vec::new(),
                            at: None,
                        });
                    }
                }
                Err(e) => {
                    self.error = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        // `db.table.column`: the table's alias is its own name.
        if let Expr::CompoundIdentifier(parts) = expr
            && parts.len() == 3
        {
            parts.remove(0);
        }
        ControlFlow::Continue(())
    }
}

fn plan(mut statement: Statement, context: &Context) -> Result<Plan, MysqlError> {
    keep_column_names(&mut statement);
    let mut substitute = Substitute {
        context,
        error: None,
    };
    let _ = statement.visit(&mut substitute);
    if let Some(e) = substitute.error {
        return Err(e);
    }
    // Catalog and session statements name databases and tables themselves.
    let qualify = !matches!(
        statement,
        Statement::CreateTable(_)
            | Statement::ShowTables { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowVariables { .. }
            | Statement::Use(_)
            | Statement::CreateDatabase { .. }
            | Statement::CreateSchema { .. }
            | Statement::Drop { .. }
            | Statement::AlterTable(_)
            | Statement::CreateIndex(_)
    );
    if qualify {
        let mut qualify = Qualify {
            context,
            ctes: Vec::new(),
            error: None,
        };
        let _ = statement.visit(&mut qualify);
        if let Some(e) = qualify.error {
            return Err(e);
        }
    }
    match statement {
        Statement::CreateDatabase {
            db_name,
            if_not_exists,
            ..
        }
        | Statement::CreateSchema {
            schema_name: sqlparser::ast::SchemaName::Simple(db_name),
            if_not_exists,
            ..
        } => Ok(Plan::CreateDatabase {
            name: object_name(&db_name),
            if_not_exists,
        }),
        Statement::Drop {
            object_type: sqlparser::ast::ObjectType::Database | sqlparser::ast::ObjectType::Schema,
            if_exists,
            names,
            ..
        } if names.len() == 1 => Ok(Plan::DropDatabase {
            name: object_name(&names[0]),
            if_exists,
        }),
        Statement::Drop {
            object_type: sqlparser::ast::ObjectType::Table,
            if_exists,
            names,
            ..
        } => {
            let mut statements = Vec::new();
            for name in &names {
                let (sqlite, _) = qualified(name, context)?;
                let if_exists = if if_exists { "IF EXISTS " } else { "" };
                statements.push(format!("DROP TABLE {if_exists}{sqlite}"));
            }
            Ok(Plan::Sqlite {
                statements,
                read_only: false,
            })
        }
        Statement::Drop {
            object_type: sqlparser::ast::ObjectType::Index,
            if_exists,
            names,
            table: Some(table),
            ..
        } => {
            let (db, table) = resolve(&table, context)?;
            let mut statements = Vec::new();
            for name in &names {
                let index = sqlite_table(&db, &format!("{table}.{}", object_name(name)));
                let if_exists = if if_exists { "IF EXISTS " } else { "" };
                statements.push(format!("DROP INDEX {if_exists}{}", quote(&index)));
            }
            Ok(Plan::Sqlite {
                statements,
                read_only: false,
            })
        }
        Statement::CreateIndex(index) => {
            let (db, table) = resolve(&index.table_name, context)?;
            let name = index
                .name
                .as_ref()
                .map(object_name)
                .ok_or_else(|| MysqlError::syntax("CREATE INDEX needs an index name"))?;
            let columns: Vec<String> = index
                .columns
                .iter()
                .map(|c| quote(&last_ident(&c.column.expr.to_string())))
                .collect();
            let unique = if index.unique { "UNIQUE " } else { "" };
            let if_not_exists = if index.if_not_exists {
                "IF NOT EXISTS "
            } else {
                ""
            };
            Ok(Plan::Sqlite {
                statements: vec![format!(
                    "CREATE {unique}INDEX {if_not_exists}{} ON {} ({})",
                    quote(&sqlite_table(&db, &format!("{table}.{name}"))),
                    quote(&sqlite_table(&db, &table)),
                    columns.join(", ")
                )],
                read_only: false,
            })
        }
        Statement::AlterTable(alter) => {
            alter_table(&alter, context).map(|statements| Plan::Sqlite {
                statements,
                read_only: false,
            })
        }
        Statement::Query(_) => Ok(Plan::Sqlite {
            statements: vec![statement.to_string()],
            read_only: true,
        }),
        Statement::Insert(mut insert) => {
            if insert.ignore {
                insert.ignore = false;
                insert.or = Some(SqliteOnConflict::Ignore);
            }
            if let Some(OnInsert::DuplicateKeyUpdate(assignments)) = insert.on.take() {
                insert.on = Some(OnInsert::OnConflict(OnConflict {
                    conflict_target: None,
                    action: OnConflictAction::DoUpdate(sqlparser::ast::DoUpdate {
                        assignments,
                        selection: None,
                    }),
                }));
            }
            if !insert.assignments.is_empty() {
                return Err(MysqlError::unsupported("INSERT ... SET"));
            }
            if let sqlparser::ast::TableObject::TableName(name) = &mut insert.table {
                *name = qualified(name, context)?.0;
            }
            Ok(Plan::Sqlite {
                statements: vec![Statement::Insert(insert).to_string()],
                read_only: false,
            })
        }
        Statement::Update(_) | Statement::Delete(_) => Ok(Plan::Sqlite {
            statements: vec![statement.to_string()],
            read_only: false,
        }),
        Statement::CreateTable(table) => {
            create_table(&table, context).map(|statements| Plan::Sqlite {
                statements,
                read_only: false,
            })
        }
        Statement::StartTransaction { .. } => Ok(Plan::Transaction(Transaction::Begin)),
        Statement::Commit { .. } => Ok(Plan::Transaction(Transaction::Commit)),
        Statement::Rollback {
            savepoint: None, ..
        } => Ok(Plan::Transaction(Transaction::Rollback)),
        Statement::Use(use_) => Ok(Plan::Use(last_ident(&use_.to_string()))),
        Statement::ShowDatabases { .. } => Ok(Plan::Show(Show::Databases)),
        Statement::ShowTables {
            full, show_options, ..
        } => Ok(Plan::Show(Show::Tables {
            database: show_options
                .show_in
                .and_then(|i| i.parent_name)
                .map(|n| object_name(&n)),
            full,
        })),
        Statement::ShowColumns { show_options, .. } => {
            match show_options.show_in.and_then(|i| i.parent_name) {
                Some(table) => {
                    let (database, table) = split_name(&table);
                    Ok(Plan::Show(Show::Columns { database, table }))
                }
                None => Err(MysqlError::syntax("SHOW COLUMNS needs FROM <table>")),
            }
        }
        Statement::ShowCreate {
            obj_type: sqlparser::ast::ShowCreateObject::Table,
            obj_name,
        } => {
            let (database, table) = split_name(&obj_name);
            Ok(Plan::Show(Show::CreateTable { database, table }))
        }
        Statement::Kill { modifier, id } => match modifier {
            None | Some(sqlparser::ast::KillType::Connection) => Ok(Plan::Kill {
                id,
                query_only: false,
            }),
            Some(sqlparser::ast::KillType::Query) => Ok(Plan::Kill {
                id,
                query_only: true,
            }),
            Some(other) => Err(MysqlError::unsupported(format!("KILL {other}"))),
        },
        Statement::ShowVariables { filter, .. } => Ok(Plan::Show(Show::Variables {
            like: match filter {
                None => None,
                Some(ShowStatementFilter::Like(pattern)) => Some(pattern),
                Some(other) => {
                    return Err(MysqlError::unsupported(format!("SHOW VARIABLES {other}")));
                }
            },
        })),
        other => Err(MysqlError::unsupported(statement_kind(&other))),
    }
}

/// The leading keywords of a statement, to name it in an error without echoing its data.
fn statement_kind(statement: &Statement) -> String {
    statement
        .to_string()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `db.table` or `table`, unquoted.
fn split_name(name: &ObjectName) -> (Option<String>, String) {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(|i| i.value.clone()))
        .collect();
    match parts.as_slice() {
        [db, table] => (Some(db.clone()), table.clone()),
        _ => (None, object_name(name)),
    }
}

fn object_name(name: &ObjectName) -> String {
    last_ident(&name.to_string())
}

/// The last dotted component, unquoted: `` `app`.`t` `` → `t`.
fn last_ident(text: &str) -> String {
    let last = text.rsplit('.').next().unwrap_or(text).trim();
    last.trim_start_matches("USE ")
        .trim()
        .trim_matches(|c| c == '`' || c == '"')
        .to_owned()
}

/// Replaces session-dependent expressions with literals and refuses functions SQLite lacks.
struct Substitute<'a> {
    context: &'a Context,
    error: Option<MysqlError>,
}

fn string(value: impl Into<String>) -> Expr {
    Expr::Value(ValueWithSpan::from(Value::SingleQuotedString(value.into())))
}

impl Substitute<'_> {
    fn variable(&self, name: &str) -> Option<Expr> {
        let name = name.trim_start_matches("@@").to_lowercase();
        let name = name
            .strip_prefix("session.")
            .or_else(|| name.strip_prefix("global."))
            .unwrap_or(&name)
            .to_owned();
        self.context
            .variables
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| match v.parse::<i64>() {
                Ok(n) => Expr::Value(ValueWithSpan::from(Value::Number(n.to_string(), false))),
                Err(_) => string(v.clone()),
            })
    }
}

impl VisitorMut for Substitute<'_> {
    type Break = ();

    /// In MySQL's default mode `"text"` is a string, as `'text'` is (only `ANSI_QUOTES`
    /// makes it a name); SQLite would read it as a column name when one matches.
    fn post_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<()> {
        if let Value::DoubleQuotedString(text) = &mut value.value {
            value.value = Value::SingleQuotedString(std::mem::take(text));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let replacement = match expr {
            Expr::Identifier(Ident { value, .. }) if value.starts_with("@@") => {
                match self.variable(value) {
                    Some(e) => Some(e),
                    None => {
                        self.error = Some(MysqlError {
                            code: 1193,
                            sqlstate: "HY000",
                            message: format!(
                                "Unknown system variable '{}'",
                                value.trim_start_matches("@@")
                            ),
                        });
                        return ControlFlow::Break(());
                    }
                }
            }
            Expr::CompoundIdentifier(parts)
                if parts.first().is_some_and(|p| p.value.starts_with("@@")) =>
            {
                let name = parts
                    .iter()
                    .map(|p| p.value.as_str())
                    .collect::<Vec<_>>()
                    .join(".");
                match self.variable(&name) {
                    Some(e) => Some(e),
                    None => {
                        self.error = Some(MysqlError {
                            code: 1193,
                            sqlstate: "HY000",
                            message: format!(
                                "Unknown system variable '{}'",
                                name.trim_start_matches("@@")
                            ),
                        });
                        return ControlFlow::Break(());
                    }
                }
            }
            Expr::Function(f) => {
                let name = f.name.to_string().to_uppercase();
                let no_args = match &f.args {
                    FunctionArguments::None => true,
                    FunctionArguments::List(list) => list.args.is_empty(),
                    FunctionArguments::Subquery(_) => false,
                };
                match name.as_str() {
                    "DATABASE" | "SCHEMA" if no_args => Some(match &self.context.database {
                        Some(db) => string(db.clone()),
                        None => Expr::Value(ValueWithSpan::from(Value::Null)),
                    }),
                    "LAST_INSERT_ID" if no_args => Some(Expr::Value(ValueWithSpan::from(
                        Value::Number(self.context.last_insert_id.to_string(), false),
                    ))),
                    "VERSION" if no_args => self.variable("version"),
                    "CONNECTION_ID" if no_args => self.variable("pseudo_thread_id"),
                    // MySQL's VALUES(col) inside ON DUPLICATE KEY UPDATE is SQLite's excluded.col.
                    "VALUES" => match &f.args {
                        FunctionArguments::List(list) if list.args.len() == 1 => {
                            let column = list.args[0].to_string();
                            Some(Expr::CompoundIdentifier(vec![
                                Ident::new("excluded"),
                                Ident::new(column.trim_matches('`')),
                            ]))
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(replacement) = replacement {
            *expr = replacement;
        }
        ControlFlow::Continue(())
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The declared type SQLite keeps for a MySQL column type. SQLite derives affinity from the
/// name (INT → integer, CHAR/TEXT → text, REAL/FLOA/DOUB → real, else numeric); names it could
/// not parse (ENUM's value list) become TEXT.
fn declared_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Enum(..) | DataType::Set(_) => "TEXT".into(),
        other => other.to_string(),
    }
}

fn create_table(table: &CreateTable, context: &Context) -> Result<Vec<String>, MysqlError> {
    let (db, name) = resolve(&table.name, context)?;
    if db == INFORMATION_SCHEMA {
        return Err(MysqlError {
            code: 1044,
            sqlstate: "42000",
            message: format!("Access denied for user to database '{INFORMATION_SCHEMA}'"),
        });
    }
    if table.query.is_some() {
        return Err(MysqlError::unsupported("CREATE TABLE ... AS SELECT"));
    }
    if table.like.is_some() {
        return Err(MysqlError::unsupported("CREATE TABLE ... LIKE"));
    }
    // The AUTO_INCREMENT column becomes SQLite's rowid alias: `INTEGER PRIMARY KEY`.
    let auto: Vec<&str> = table
        .columns
        .iter()
        .filter(|c| c.options.iter().any(|o| matches!(&o.option, ColumnOption::DialectSpecific(tokens) if tokens.iter().any(|t| t.to_string().eq_ignore_ascii_case("AUTO_INCREMENT")))))
        .map(|c| c.name.value.as_str())
        .collect();
    if auto.len() > 1 {
        return Err(MysqlError { code: 1075, sqlstate: "42000", message: "Incorrect table definition; there can be only one auto column and it must be defined as a key".into() });
    }
    let table_pk: Option<Vec<String>> = table.constraints.iter().find_map(|c| match c {
        TableConstraint::PrimaryKey(pk) => Some(
            pk.columns
                .iter()
                .map(|col| last_ident(&col.to_string()))
                .collect(),
        ),
        _ => None,
    });
    let has_key = table_pk.is_some()
        || !auto.is_empty()
        || table.columns.iter().any(|c| {
            c.options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::PrimaryKey(_)))
        });
    if !has_key {
        // Replication ships row changes keyed by primary key (see engine.rs), as MySQL does
        // under sql_require_primary_key, whose error this is.
        return Err(MysqlError {
            code: 3750,
            sqlstate: "HY000",
            message: "Unable to create or change a table without a primary key, when the system variable 'sql_require_primary_key' is set. Add a primary key to the table or unset this variable to avoid this message. Note that tables without a primary key can cause performance problems in row-based replication, so please consult your DBA before changing this setting.".into(),
        });
    }
    let mut columns = Vec::new();
    for column in &table.columns {
        let is_auto = auto.contains(&column.name.value.as_str());
        if is_auto {
            let inline_pk = column
                .options
                .iter()
                .any(|o| matches!(o.option, ColumnOption::PrimaryKey(_)));
            let single_pk = inline_pk
                || table_pk
                    .as_deref()
                    .is_some_and(|pk| pk.len() == 1 && pk[0] == column.name.value);
            if !single_pk {
                return Err(MysqlError { code: 1075, sqlstate: "42000", message: "Incorrect table definition; there can be only one auto column and it must be defined as a key".into() });
            }
        }
        let mut text = column_sql(column, is_auto)?;
        // MySQL's key columns are NOT NULL; SQLite's are not unless told (the rowid alias of
        // the auto-increment column assigns a value for NULL, as MySQL does).
        let in_pk = column
            .options
            .iter()
            .any(|o| matches!(o.option, ColumnOption::PrimaryKey(_)))
            || table_pk
                .as_deref()
                .is_some_and(|pk| pk.contains(&column.name.value));
        let declared_not_null = column
            .options
            .iter()
            .any(|o| matches!(o.option, ColumnOption::NotNull));
        if in_pk && !is_auto && !declared_not_null {
            text.push_str(" NOT NULL");
        }
        columns.push(text);
    }
    let mut indexes = Vec::new();
    for constraint in &table.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                let cols: Vec<String> = pk
                    .columns
                    .iter()
                    .map(|c| last_ident(&c.to_string()))
                    .collect();
                if !(cols.len() == 1 && auto.contains(&cols[0].as_str())) {
                    columns.push(format!(
                        "PRIMARY KEY ({})",
                        cols.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            TableConstraint::Unique(unique) => {
                let cols: Vec<String> = unique
                    .columns
                    .iter()
                    .map(|c| quote(&last_ident(&c.to_string())))
                    .collect();
                columns.push(format!("UNIQUE ({})", cols.join(", ")));
            }
            TableConstraint::Check(check) => columns.push(format!("CHECK ({})", check.expr)),
            TableConstraint::Index(index) => {
                let cols: Vec<String> = index
                    .columns
                    .iter()
                    .map(|c| quote(&last_ident(&c.to_string())))
                    .collect();
                let index_name = index
                    .name
                    .as_ref()
                    .map(|n| n.value.clone())
                    .unwrap_or_else(|| format!("{name}_{}", indexes.len() + 1));
                indexes.push(format!(
                    "CREATE INDEX {} ON {} ({})",
                    quote(&sqlite_table(&db, &format!("{name}.{index_name}"))),
                    quote(&sqlite_table(&db, &name)),
                    cols.join(", ")
                ));
            }
            other => return Err(MysqlError::unsupported(format!("table constraint {other}"))),
        }
    }
    let if_not_exists = if table.if_not_exists {
        "IF NOT EXISTS "
    } else {
        ""
    };
    let mut statements = vec![format!(
        "CREATE TABLE {if_not_exists}{} ({})",
        quote(&sqlite_table(&db, &name)),
        columns.join(", ")
    )];
    statements.extend(indexes);
    Ok(statements)
}

/// One column definition in SQLite's terms; the auto-increment column becomes the rowid alias.
fn column_sql(column: &sqlparser::ast::ColumnDef, is_auto: bool) -> Result<String, MysqlError> {
    let mut text = format!("{} ", quote(&column.name.value));
    if is_auto {
        text.push_str("INTEGER PRIMARY KEY");
    } else {
        text.push_str(&declared_type(&column.data_type));
    }
    for option in &column.options {
        match &option.option {
            ColumnOption::Null => text.push_str(" NULL"),
            ColumnOption::NotNull => text.push_str(" NOT NULL"),
            ColumnOption::Default(expr) => {
                let _ = write!(text, " DEFAULT ({expr})");
            }
            ColumnOption::PrimaryKey(_) if !is_auto => text.push_str(" PRIMARY KEY"),
            ColumnOption::Unique(_) => text.push_str(" UNIQUE"),
            ColumnOption::Check(check) => {
                let _ = write!(text, " CHECK ({})", check.expr);
            }
            ColumnOption::PrimaryKey(_)
            | ColumnOption::DialectSpecific(_)
            | ColumnOption::CharacterSet(_)
            | ColumnOption::Collation(_)
            | ColumnOption::Comment(_)
            | ColumnOption::OnUpdate(_) => {}
            other => return Err(MysqlError::unsupported(format!("column option {other}"))),
        }
    }
    Ok(text)
}

/// `ALTER TABLE`: each operation SQLite can do becomes its own statement.
fn alter_table(
    alter: &sqlparser::ast::AlterTable,
    context: &Context,
) -> Result<Vec<String>, MysqlError> {
    use sqlparser::ast::{AlterTableOperation as Op, RenameTableNameKind};
    let (db, table) = resolve(&alter.name, context)?;
    let target = quote(&sqlite_table(&db, &table));
    let mut statements = Vec::new();
    for operation in &alter.operations {
        statements.push(match operation {
            Op::AddColumn {
                column_def,
                column_position: None,
                ..
            } => {
                if column_def.options.iter().any(|o| {
                    matches!(
                        o.option,
                        ColumnOption::PrimaryKey(_) | ColumnOption::Unique(_)
                    )
                }) {
                    return Err(MysqlError::unsupported(
                        "ALTER TABLE ... ADD COLUMN with PRIMARY KEY or UNIQUE",
                    ));
                }
                format!(
                    "ALTER TABLE {target} ADD COLUMN {}",
                    column_sql(column_def, false)?
                )
            }
            Op::DropColumn { column_names, .. } if column_names.len() == 1 => format!(
                "ALTER TABLE {target} DROP COLUMN {}",
                quote(&column_names[0].value)
            ),
            Op::RenameColumn {
                old_column_name,
                new_column_name,
            } => format!(
                "ALTER TABLE {target} RENAME COLUMN {} TO {}",
                quote(&old_column_name.value),
                quote(&new_column_name.value)
            ),
            Op::RenameTable {
                table_name: RenameTableNameKind::To(name) | RenameTableNameKind::As(name),
            } => {
                let (new_db, new_table) = resolve(name, context)?;
                if new_db != db {
                    return Err(MysqlError::unsupported(
                        "ALTER TABLE ... RENAME to another database",
                    ));
                }
                format!(
                    "ALTER TABLE {target} RENAME TO {}",
                    quote(&sqlite_table(&db, &new_table))
                )
            }
            other => return Err(MysqlError::unsupported(format!("ALTER TABLE ... {other}"))),
        });
    }
    Ok(statements)
}

/// Splits on commas outside quotes and parentheses.
fn split_assignments(text: &str) -> Vec<String> {
    let (mut out, mut current, mut depth, mut quote_char) =
        (Vec::new(), String::new(), 0usize, None::<char>);
    for c in text.chars() {
        match (quote_char, c) {
            (Some(q), c) if c == q => quote_char = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote_char = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, ',') if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_set(text: &str) -> Result<Vec<Setting>, MysqlError> {
    let mut settings = Vec::new();
    for item in split_assignments(text) {
        let upper = item.to_uppercase();
        if upper.starts_with("NAMES ")
            || upper.starts_with("CHARACTER SET ")
            || upper.starts_with("CHARSET ")
        {
            let rest = item
                .split_whitespace()
                .skip(if upper.starts_with("CHARACTER SET ") {
                    2
                } else {
                    1
                })
                .collect::<Vec<_>>();
            let charset = rest
                .first()
                .map(|c| c.trim_matches(|q| q == '\'' || q == '"').to_owned())
                .ok_or_else(|| MysqlError::syntax(format!("SET {item}: no character set")))?;
            settings.push(Setting::Names { charset });
            continue;
        }
        if upper.starts_with("TRANSACTION ") {
            return Err(MysqlError::unsupported(format!("SET {item}")));
        }
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| MysqlError::syntax(format!("SET {item}: expected name = value")))?;
        let name = name.trim().to_lowercase();
        let name = name
            .trim_start_matches("@@")
            .trim_start_matches("session ")
            .trim_start_matches("local ")
            .trim_start_matches("session.")
            .trim_start_matches("local.")
            .trim()
            .to_owned();
        if name.starts_with("global") || name.starts_with('@') {
            return Err(MysqlError::unsupported(format!("SET {}", item.trim())));
        }
        let value = value
            .trim()
            .trim_matches(|q| q == '\'' || q == '"')
            .to_owned();
        settings.push(Setting::Variable { name, value });
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context {
            database: Some("app".into()),
            last_insert_id: 42,
            variables: vec![
                ("version".into(), "8.0.36-quartet".into()),
                ("version_comment".into(), "Quartet".into()),
                ("auto_increment_increment".into(), "1".into()),
            ],
        }
    }

    fn sqlite(sql: &str) -> Vec<String> {
        match translate(sql, &context())
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .remove(0)
        {
            Plan::Sqlite { statements, .. } => statements,
            other => panic!("{sql}: expected SQL, got {other:?}"),
        }
    }

    #[test]
    fn session_statements_become_plans() {
        let plans = translate("SET sql_mode=(SELECT CONCAT(@@sql_mode,',PIPES_AS_CONCAT')),time_zone='+00:00',NAMES utf8mb4 COLLATE utf8mb4_unicode_ci", &context()).expect("parses");
        assert_eq!(
            plans,
            [Plan::Set(vec![
                Setting::Variable {
                    name: "sql_mode".into(),
                    value: "(SELECT CONCAT(@@sql_mode,',PIPES_AS_CONCAT'))".into()
                },
                Setting::Variable {
                    name: "time_zone".into(),
                    value: "+00:00".into()
                },
                Setting::Names {
                    charset: "utf8mb4".into()
                },
            ])]
        );
        assert_eq!(
            translate("SET autocommit = 0", &context()).expect("parses"),
            [Plan::Set(vec![Setting::Variable {
                name: "autocommit".into(),
                value: "0".into()
            }])]
        );
        assert_eq!(
            translate("USE `shop`", &context()).expect("parses"),
            [Plan::Use("shop".into())]
        );
        assert_eq!(
            translate("START TRANSACTION", &context()).expect("parses"),
            [Plan::Transaction(Transaction::Begin)]
        );
        assert_eq!(
            translate("begin; commit", &context()).expect("parses"),
            [
                Plan::Transaction(Transaction::Begin),
                Plan::Transaction(Transaction::Commit)
            ]
        );
        assert_eq!(
            translate("SHOW FULL TABLES FROM shop", &context()).expect("parses"),
            [Plan::Show(Show::Tables {
                database: Some("shop".into()),
                full: true
            })]
        );
        assert_eq!(
            translate("SHOW VARIABLES LIKE 'version%'", &context()).expect("parses"),
            [Plan::Show(Show::Variables {
                like: Some("version%".into())
            })]
        );
        assert_eq!(
            translate("SHOW CREATE TABLE `t`", &context()).expect("parses"),
            [Plan::Show(Show::CreateTable {
                database: None,
                table: "t".into()
            })]
        );
        assert_eq!(
            translate("SHOW COLUMNS FROM app.t", &context()).expect("parses"),
            [Plan::Show(Show::Columns {
                database: Some("app".into()),
                table: "t".into()
            })]
        );
    }

    /// Found by the sql_translate fuzz target (fuzz/): text that is only comments parsed to
    /// no statement and translated to no plan, so the front sent no answer and the client
    /// waited for one.
    #[test]
    fn text_of_only_comments_is_an_empty_query() {
        for sql in [
            "#ST;\0\0 \0\n",
            "-- nothing",
            "/* nothing */",
            "/* a */; -- b",
        ] {
            let e = translate(sql, &context()).expect_err(sql);
            assert_eq!(
                (e.code, e.message.as_str()),
                (1065, "Query was empty"),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn errors_are_mysql_errors_naming_the_problem() {
        let e = translate("SELEC 1", &context()).expect_err("syntax");
        assert_eq!((e.code, e.sqlstate), (1064, "42000"));
        let e = translate("GRANT ALL ON *.* TO bob", &context()).expect_err("unsupported");
        assert_eq!(e.code, 1235);
        assert!(e.message.contains("'GRANT ALL'"), "{}", e.message);
        let e = translate("SELECT @@no_such_thing", &context()).expect_err("unknown variable");
        assert_eq!(
            (e.code, e.message.as_str()),
            (1193, "Unknown system variable 'no_such_thing'")
        );
        assert_eq!(translate("  ;", &context()).expect_err("empty").code, 1065);
        assert_eq!(
            translate("SET GLOBAL max_connections = 10", &context())
                .expect_err("global")
                .code,
            1235
        );
        assert_eq!(
            translate("CREATE TABLE a (x INT AUTO_INCREMENT, y INT)", &context())
                .expect_err("auto not key")
                .code,
            1075
        );
        assert_eq!(
            translate("CREATE TABLE loose (a INT, b TEXT)", &context())
                .expect_err("no key")
                .code,
            3750
        );
    }

    /// Runs translated statements on a real SQLite and returns the rows of the last query.
    struct Sqlite(rusqlite::Connection);

    impl Sqlite {
        fn new() -> Self {
            Self(rusqlite::Connection::open_in_memory().expect("sqlite"))
        }

        fn run(&self, sql: &str) -> Vec<Vec<String>> {
            let mut rows = Vec::new();
            for statement in sqlite(sql) {
                let mut prepared = self
                    .0
                    .prepare(&statement)
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
                let width = prepared.column_count();
                let mut result = prepared
                    .query([])
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
                rows.clear();
                while let Some(row) = result.next().unwrap_or_else(|e| panic!("{statement}: {e}")) {
                    rows.push(
                        (0..width)
                            .map(|i| match row.get_ref(i).expect("column") {
                                rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                                rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                                rusqlite::types::ValueRef::Real(f) => f.to_string(),
                                rusqlite::types::ValueRef::Text(t) => {
                                    String::from_utf8_lossy(t).into_owned()
                                }
                                rusqlite::types::ValueRef::Blob(_) => "<blob>".to_owned(),
                            })
                            .collect(),
                    );
                }
            }
            rows
        }
    }

    #[test]
    fn mysql_ddl_and_upserts_run_on_sqlite_with_mysql_meaning() {
        let db = Sqlite::new();
        db.run(
            "CREATE TABLE `users` (`id` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, `name` VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '' COMMENT 'login', \
             `role` ENUM('admin','user') DEFAULT 'user', `visits` INT NOT NULL DEFAULT 0, `seen` TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP, \
             PRIMARY KEY (`id`), UNIQUE KEY `u_name` (`name`), KEY `k_seen` (`seen`)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        );
        db.run("INSERT INTO users (name) VALUES ('ada'), ('bob')");
        assert_eq!(
            db.run("SELECT id, name, role, visits FROM users ORDER BY id"),
            [["1", "ada", "user", "0"], ["2", "bob", "user", "0"]]
        );
        db.run("INSERT INTO users (name, visits) VALUES ('ada', 5) ON DUPLICATE KEY UPDATE visits = visits + VALUES(visits)");
        db.run("INSERT IGNORE INTO users (name) VALUES ('bob')");
        db.run("REPLACE INTO users (id, name, visits) VALUES (2, 'bob', 9)");
        assert_eq!(
            db.run("SELECT `name`, `visits` FROM `users` ORDER BY `id` LIMIT 0, 10"),
            [["ada", "5"], ["bob", "9"]]
        );
        assert_eq!(
            db.run("SELECT name FROM users ORDER BY id LIMIT 1, 1"),
            [["bob"]]
        );
        db.run("INSERT INTO users (name) VALUES ('cyd')");
        assert_eq!(
            db.run("SELECT MAX(id) FROM users"),
            [["3"]],
            "AUTO_INCREMENT continues after the largest id"
        );
        // Tables and indexes live under their database's name.
        let catalog = |sql: &str| -> Vec<String> {
            let mut statement = db.0.prepare(sql).expect("catalog query");
            statement
                .query_map([], |r| r.get::<_, String>(0))
                .expect("rows")
                .collect::<Result<_, _>>()
                .expect("names")
        };
        assert_eq!(
            catalog(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'app.users' AND sql IS NOT NULL"
            ),
            ["app.users.k_seen"]
        );
        db.run("CREATE TABLE other.users (id INT PRIMARY KEY)");
        db.run("INSERT INTO other.users VALUES (7)");
        assert_eq!(
            db.run("SELECT u.id, COUNT(*) FROM other.users AS u JOIN users ON users.id > 0 GROUP BY u.id"),
            [["7", "3"]],
            "a table of another database, joined with the current one's"
        );
        db.run("DROP TABLE `users`");
        assert_eq!(
            catalog("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"),
            ["other.users"]
        );
    }

    #[test]
    fn session_values_are_substituted() {
        let db = Sqlite::new();
        assert_eq!(db.run("SELECT @@version_comment LIMIT 1"), [["Quartet"]]);
        assert_eq!(db.run("SELECT @@session.auto_increment_increment AS a, DATABASE(), LAST_INSERT_ID(), VERSION()"), [["1", "app", "42", "8.0.36-quartet"]]);
        let none = Context {
            database: None,
            ..context()
        };
        match translate("SELECT DATABASE()", &none)
            .expect("parses")
            .remove(0)
        {
            Plan::Sqlite {
                statements,
                read_only,
            } => {
                assert!(read_only);
                assert_eq!(
                    statements,
                    ["SELECT NULL AS `DATABASE()`"],
                    "named as MySQL names it"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn translation_never_panics(sql in "\\PC{0,120}") {
            let _ = translate(&sql, &context());
        }

        #[test]
        fn mysql_shaped_statements_never_panic(
            verb in proptest::sample::select(vec!["SELECT", "INSERT INTO t VALUES", "CREATE TABLE t", "SET", "SHOW", "UPDATE t SET", "DELETE FROM"]),
            rest in "[ a-z0-9`'(),=@.*_;-]{0,60}",
        ) {
            let _ = translate(&format!("{verb} {rest}"), &context());
        }
    }
}
