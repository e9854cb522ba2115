#ifndef CSQLITE_H
#define CSQLITE_H
#include <sqlite3.h>

/// SQLITE_TRANSIENT is a cast macro Swift cannot import: bind copies of the bytes through these.
int sipedge_sqlite_bind_text(sqlite3_stmt *statement, int index, const char *text, int length);
int sipedge_sqlite_bind_blob(sqlite3_stmt *statement, int index, const void *bytes, int length);
#endif
