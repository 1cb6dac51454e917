// How fast one pinned sender moves a page-cached file over loopback TCP to a pinned
// receiver, three ways: pread+write (a copy), sendfile (zero copy, what the broker's
// fetch does in page-cache mode), splice through a pipe of a given size.
//
//   cc -O2 -o loopback-send perf/loopback-send.c
//   ./loopback-send copy|sendfile|splice FILE CHUNK_BYTES [PIPE_BYTES]
//
// Sender on CPU 0, receiver (recv of 1 MiB at a time) on CPU 1, 3 s; prints MB/s.
// SPIN=1: the receiver polls (non-blocking recv in a loop) instead of sleeping in recv.
// A sleeping receiver's every wake-up costs the sender's CPU an interrupt to the other
// vCPU; on this VM that halves what sendfile carries (perf/RESULTS.md, "A sleeping
// receiver halves sendfile here", 2026-11-22).
// FILE should be in the page cache (cat it to /dev/null first). perf/RESULTS.md, "What
// loopback and sendfile carry here", 2026-11-21.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/sendfile.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <errno.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);sched_setaffinity(0,sizeof s,&s);}
int main(int argc,char**argv){
  if(argc<4){fprintf(stderr,"usage: %s copy|sendfile|splice FILE CHUNK_BYTES [PIPE_BYTES]\n",argv[0]);return 2;}
  int spin=getenv("SPIN")&&*getenv("SPIN")=='1'; const char*mode=argv[1]; const char*path=argv[2]; long chunk=atol(argv[3]); int pipesz=argc>4?atoi(argv[4]):0; int secs=3;
  int fd=open(path,O_RDONLY); if(fd<0){perror(path);return 1;} off_t fsz=lseek(fd,0,SEEK_END);
  int ls=socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in a={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};
  bind(ls,(void*)&a,sizeof a); listen(ls,1); socklen_t al=sizeof a; getsockname(ls,(void*)&a,&al);
  pid_t p=fork();
  if(p==0){ pin(1); int c=accept(ls,0,0); char*buf=malloc(1<<20); ssize_t n;
    if(spin){ while((n=recv(c,buf,1<<20,MSG_DONTWAIT))!=0) if(n<0&&errno!=EAGAIN) break; }
    else while(recv(c,buf,1<<20,0)>0) {}
    _exit(0);}
  pin(0); int s=socket(AF_INET,SOCK_STREAM,0); connect(s,(void*)&a,sizeof a); int one=1; setsockopt(s,IPPROTO_TCP,TCP_NODELAY,&one,4);
  int pp[2]; if(!strcmp(mode,"splice")){pipe(pp); if(pipesz) fcntl(pp[1],F_SETPIPE_SZ,pipesz); fprintf(stderr,"pipe %d\n",fcntl(pp[1],F_GETPIPE_SZ));}
  char*buf=malloc(chunk); double t0=now(); long tot=0; off_t off=0;
  while(now()-t0<secs){
    if(off+chunk>fsz) off=0;
    if(!strcmp(mode,"sendfile")){ off_t o=off; ssize_t n=sendfile(s,fd,&o,chunk); if(n<=0){perror("sendfile");break;} tot+=n; off+=n; }
    else if(!strcmp(mode,"copy")){ ssize_t n=pread(fd,buf,chunk,off); ssize_t w=0; while(w<n){ssize_t k=write(s,buf+w,n-w); if(k<=0){perror("w");exit(1);} w+=k;} tot+=n; off+=n; }
    else { loff_t o=off; long left=chunk; while(left>0){ ssize_t n=splice(fd,&o,pp[1],0,left,SPLICE_F_MOVE|SPLICE_F_MORE); if(n<=0){perror("splice");exit(1);} left-=n; while(n>0){ssize_t k=splice(pp[0],0,s,0,n,SPLICE_F_MOVE|SPLICE_F_MORE); if(k<=0){perror("s2");exit(1);} n-=k;} } tot+=chunk; off+=chunk; }
  }
  double dt=now()-t0; close(s); wait(0);
  printf("%s chunk=%ld pipe=%d%s: %.0f MB/s\n",mode,chunk,pipesz,spin?" spin":"",tot/dt/1e6);
}
