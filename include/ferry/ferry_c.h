/* The C entry points of ferry's shim (libferry.so), for programs running under it.
 *
 * Nothing links against the shim: a program looks these up at run time with
 * dlsym(RTLD_DEFAULT, "ferry_checkpoint") & co. and finds them only when it runs under
 * `ferry run` (include/ferry/ferry.hpp does that for C++). Each operation returns 0 on
 * success or a ferry_error_class, and fills a ferry_result when given one.
 *
 * The operations stop the program's CUDA calls while they work (each thread waits at
 * its next CUDA call) -- never call them from inside a CUDA callback or while holding
 * a lock another thread needs to reach that point. Hooks run on the thread doing the
 * operation with the world stopped: they must not call CUDA. */
#ifndef FERRY_C_H
#define FERRY_C_H

#ifdef __cplusplus
extern "C" {
#endif

/* 3: ferry_options gained read_all. 4: ferry_result gained carried. A struct of an older,
 * smaller size is still accepted; a shim of ABI 3 leaves carried 0. */
#define FERRY_C_ABI_VERSION 4
/* The oldest shim this header's operations work with (what a 4 added is only reported). */
#define FERRY_C_ABI_OLDEST 3

enum ferry_error_class {
  FERRY_OK = 0,
  FERRY_RETRY_LATER = 1, /* transient: try again later */
  FERRY_FIX_FIRST = 2,   /* the request or the environment must change */
  FERRY_DATA_LOST = 3,   /* an image is damaged or incomplete */
  FERRY_BUG = 4          /* ferry itself failed */
};

typedef void (*ferry_progress_fn)(const char* phase, unsigned long long done, unsigned long long total, void* user);
typedef void (*ferry_hook_fn)(const char* op, int after, void* user);

struct ferry_options {
  unsigned size;                     /* sizeof(struct ferry_options); 0: all defaults */
  const char* dir;                   /* image directory */
  const char* parent;                /* incremental checkpoint: an earlier image */
  int leave_running;                 /* checkpoint: let the program go on once memory is in host RAM */
  int stay_stopped;                  /* checkpoint/restore: keep the program stopped until resume */
  int discard;                       /* suspend: drop the GPU state instead of keeping it */
  int zstd_level;                    /* 0: no compression */
  int device;                        /* resume/migrate/restore: the program's device goes here (-1: stay) */
  const int* device_map;             /* or a whole map: program device i -> physical device_map[i] */
  int device_map_len;
  unsigned long long staging_bytes;  /* pinned staging memory (0: default, 256 MiB) */
  ferry_progress_fn progress;
  void* progress_user;
  int read_all;                      /* checkpoint: read every chunk, without comparing GPU fingerprints */
};

/* Defaults: staying on the same devices, no compression, the process left running. */
#define FERRY_OPTIONS_INIT {sizeof(struct ferry_options), 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0}

struct ferry_result {
  unsigned size; /* sizeof(struct ferry_result) */
  int error_class;
  char message[1024];
  unsigned long long device_bytes; /* device memory in the snapshot */
  unsigned long long written;      /* bytes written to the image */
  unsigned long long reused;       /* bytes referenced from the parent image */
  double seconds;                  /* the whole operation */
  double stopped_seconds;          /* how long the program's CUDA calls were held */
  unsigned long long copied;       /* device bytes copied to the host (unchanged chunks are not) */
  unsigned long long carried;      /* the parent's bytes copied in so the image stands alone (not in written) */
};

int ferry_shim_abi_version(void);
int ferry_checkpoint(const struct ferry_options* o, struct ferry_result* r);
int ferry_suspend(const struct ferry_options* o, struct ferry_result* r);
int ferry_resume(const struct ferry_options* o, struct ferry_result* r);
int ferry_migrate(const struct ferry_options* o, struct ferry_result* r);
int ferry_restore(const struct ferry_options* o, struct ferry_result* r);
/* Status as JSON into buf (NUL-terminated, truncated to len); returns the full length. */
unsigned long ferry_status(char* buf, unsigned long len);
int ferry_add_hook(ferry_hook_fn fn, void* user);

#ifdef __cplusplus
}
#endif

#endif
