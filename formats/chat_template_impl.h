/* Internals of the chat template engine (formats/chat_template.h): the parsed tree shared by
 * chat_template_parse.c (lexer and parser) and chat_template_eval.c (the renderer). */
#ifndef KV_CHAT_TEMPLATE_IMPL_H
#define KV_CHAT_TEMPLATE_IMPL_H

#include <stddef.h>

#include "formats/chat_template.h"

#define CT_MAX_DEPTH 64

typedef enum {
    CE_STR, /* s[n] literal */
    CE_INT, /* i */
    CE_BOOL, /* i: 0 / 1 */
    CE_NONE,
    CE_NAME, /* s */
    CE_ATTR, /* a.s */
    CE_INDEX, /* a[b] */
    CE_SLICE, /* a[b:c], b or c NULL when omitted */
    CE_CALL, /* a(args), a a CE_NAME (function) or CE_ATTR (method) */
    CE_FILTER, /* a | s(args) */
    CE_TEST, /* a is [not: i] s */
    CE_BIN, /* a op b */
    CE_NOT, /* not a */
    CE_NEG, /* -a */
    CE_COND, /* b if a else c (c NULL: undefined) */
} ct_expr_kind;

typedef enum {
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_FLOORDIV,
    OP_MOD,
    OP_CONCAT,
    OP_EQ,
    OP_NE,
    OP_LT,
    OP_LE,
    OP_GT,
    OP_GE,
    OP_IN,
    OP_NOT_IN,
    OP_AND,
    OP_OR,
} ct_op;

typedef struct ct_expr ct_expr;
struct ct_expr {
    ct_expr_kind kind;
    ct_op op;
    const char *s; /* names and string literals (NUL-terminated too) */
    size_t n;
    long i;
    ct_expr *a, *b, *c;
    ct_expr **args; /* [nargs] */
    const char **kw; /* [nargs] keyword names, NULL entries for positional ones */
    int nargs;
    int line; /* 1-based line of the template */
};

typedef enum { CS_TEXT, CS_OUT, CS_IF, CS_FOR, CS_SET } ct_stmt_kind;

typedef struct ct_stmt ct_stmt;
typedef struct {
    ct_stmt **v;
    int n, cap;
} ct_block;

struct ct_stmt {
    ct_stmt_kind kind;
    const char *text; /* CS_TEXT */
    size_t len;
    ct_expr *e; /* CS_OUT value, CS_IF condition, CS_FOR iterable, CS_SET value */
    const char *name; /* CS_FOR loop variable, CS_SET target */
    const char *attr; /* CS_SET ns.attr: the attribute, else NULL */
    ct_block body, orelse; /* CS_IF: then / else; CS_FOR: body */
    int line;
};

struct kv_chat_template {
    char label[512];
    ct_block root;
    void **allocs; /* everything the tree holds, freed together */
    int n_allocs, cap_allocs;
};

/* calloc'd memory owned by t (NULL when out of memory) */
void *ct_alloc(kv_chat_template *t, size_t bytes);

#endif
