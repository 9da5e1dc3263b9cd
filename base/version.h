#ifndef KV_VERSION_H
#define KV_VERSION_H
#define KVFORGE_VERSION_STRING "0.1.0"
#endif
