/* Confinement of an NF process once its privileged setup is done.
 *
 * qs_lock_memory   mlockall(MCL_CURRENT), called once everything the data path
 *                  touches is mapped (no page fault mid-batch: a fault would
 *                  let the next NF run while this one holds a half-processed
 *                  batch).  Not MCL_FUTURE: without CAP_IPC_LOCK every later
 *                  mmap past RLIMIT_MEMLOCK would fail.
 * qs_deny_sched    a seccomp filter, on every thread of the process (TSYNC),
 *                  that makes the calls an NF could use to escape the
 *                  cooperative scheduler or reach another process fail with
 *                  EPERM: sched_setscheduler/setparam/setattr/setaffinity,
 *                  setpriority, ptrace, process_vm_readv/writev, and the
 *                  calls that make new tasks (clone, clone3, fork, vfork,
 *                  execve, execveat).  x32 and
 *                  foreign-arch system calls kill the process.
 */
#ifndef QS_SANDBOX_H
#define QS_SANDBOX_H

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline int qs_lock_memory(void) { return mlockall(MCL_CURRENT); }

static const int qs_denied_syscalls[] = {
    __NR_sched_setscheduler, __NR_sched_setparam, __NR_sched_setattr, __NR_sched_setaffinity,
    __NR_setpriority,        __NR_ptrace,         __NR_process_vm_readv, __NR_process_vm_writev,
    /* no new tasks: a thread or child of an NF would be scheduled outside its
     * chain's group (e.g. in an RT-throttling window, while its predecessor
     * holds a half-processed batch) */
    __NR_clone, __NR_clone3, __NR_fork, __NR_vfork, __NR_execve, __NR_execveat,
};

#define QS_N_DENIED (sizeof(qs_denied_syscalls) / sizeof(qs_denied_syscalls[0]))

/* Returns 0, or -errno. */
static inline int qs_deny_sched(void)
{
    struct sock_filter f[8 + 2 * QS_N_DENIED];
    struct sock_fprog prog;
    unsigned i, k = 0;
    f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, arch));
    f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          offsetof(struct seccomp_data, nr));
    f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1);
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    for (i = 0; i < QS_N_DENIED; i++) {
        f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
                                              (unsigned)qs_denied_syscalls[i], 0, 1);
        f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    }
    f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog.len = (unsigned short)k;
    prog.filter = f;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    if (syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0)
        return -errno;
    return 0;
}

static inline int qs_not_dumpable(void) { return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) ? -errno : 0; }

#endif
