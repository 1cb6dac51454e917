// Round trip of a 100-byte ping-pong over loopback TCP between two pinned processes
// (client on CPU 1, echo server on CPU 0), blocking or busy-polling: the floor under a
// request's latency on this machine, most of it the wake-ups of idle vCPUs.
//
//   cc -O2 -o pingpong perf/pingpong.c
//   ./pingpong SPIN GAP_US      SPIN: 0 (blocking recv) or 1 (non-blocking, spinning);
//                               GAP_US: pause between pings
//
// Prints p50/p90/p99/max of 2000 round trips. perf/RESULTS.md, "What loopback and
// sendfile carry here", 2026-11-21.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sched.h>
#include <time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <errno.h>
static long nowns(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000L+t.tv_nsec;}
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);sched_setaffinity(0,sizeof s,&s);}
static int cmp(const void*a,const void*b){long x=*(long*)a,y=*(long*)b;return x<y?-1:x>y;}
// argv1: spin (0/1) for both sides; argv2: gap us between pings
int main(int argc,char**argv){
  if(argc<3){fprintf(stderr,"usage: %s SPIN(0|1) GAP_US\n",argv[0]);return 2;}
  int spin=atoi(argv[1]); int gap=atoi(argv[2]); int n=2000;
  int ls=socket(AF_INET,SOCK_STREAM,0); struct sockaddr_in a={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};
  bind(ls,(void*)&a,sizeof a); listen(ls,1); socklen_t al=sizeof a; getsockname(ls,(void*)&a,&al);
  int one=1;
  if(fork()==0){ pin(0); int c=accept(ls,0,0); setsockopt(c,IPPROTO_TCP,TCP_NODELAY,&one,4); if(spin) fcntl(c,F_SETFL,O_NONBLOCK); char b[200];
    for(;;){ ssize_t r=recv(c,b,100,0); if(r<0&&errno==EAGAIN) continue; if(r<=0) _exit(0); send(c,b,r,0);} }
  pin(1); int s=socket(AF_INET,SOCK_STREAM,0); connect(s,(void*)&a,sizeof a); setsockopt(s,IPPROTO_TCP,TCP_NODELAY,&one,4); if(spin) fcntl(s,F_SETFL,O_NONBLOCK);
  long*rt=malloc(n*sizeof(long)); char b[200]={0};
  for(int i=0;i<n;i++){ long t0=nowns(); send(s,b,100,0); ssize_t got=0; while(got<100){ ssize_t r=recv(s,b,100-got,0); if(r<0&&errno==EAGAIN) continue; if(r<=0) exit(1); got+=r;} rt[i]=nowns()-t0;
    long until=nowns()+gap*1000L; if(gap) { if(spin) while(nowns()<until); else usleep(gap);} }
  close(s); wait(0); qsort(rt,n,sizeof(long),cmp);
  printf("spin=%d gap=%dus rtt us: p50 %.1f p90 %.1f p99 %.1f max %.1f\n",spin,gap,rt[n/2]/1e3,rt[n*9/10]/1e3,rt[n*99/100]/1e3,rt[n-1]/1e3);
}
