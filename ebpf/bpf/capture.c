// SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0)
// Ambit traffic capture. Built by build.rs with clang, loaded with aya.
//
// Outbound: cgroup/connect4 at the cgroup-v2 root. A TCP connect() from a pod
// whose network namespace is enrolled (by netns cookie) is rewritten to the
// ztunnel listener inside that namespace (127.0.0.1:15001). The original
// destination is remembered by socket cookie, and sockops moves it to a key
// ztunnel can compute from the accepted socket: (netns cookie, src ip, src port).
// ztunnel's own sockets carry SO_MARK 0x539 and are never touched.
//
// Services for this cluster's pods that are not enrolled: the same connect4
// picks a backend of a ClusterIP (socket-level load balancing, standing in for kube-proxy).
//
// Inbound: sk_lookup on each enrolled pod's namespace steers TCP connections to
// the pod's own IP into ztunnel's in-pod 15006 socket (plaintext inbound), except
// local ones (ztunnel's own upstream connects, from the pod's own address) and
// ztunnel's ports. While ztunnel is away, that plaintext is dropped.
//
// Every map and link is pinned under bpffs by the loader (ebpf/src/lib.rs), so
// capture, and failing closed, outlive the ztunnel process.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ZTUNNEL_MARK 0x539
#define PORT_OUTBOUND 15001
#define PORT_INBOUND_PLAIN 15006
#define PORT_HBONE 15008
#define SOCK_STREAM_TYPE 1
#define MAX_BACKENDS 32

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// netns cookie -> what to do with that namespace's connects:
// MODE_CAPTURE (enrolled: redirect to ztunnel) or MODE_BALANCE (a pod of this
// cluster outside the mesh: only Service VIP load balancing). Namespaces not in
// the map (the host, other clusters) are never touched.
#define MODE_CAPTURE 1
#define MODE_BALANCE 2
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} enrolled SEC(".maps");

struct dst4 {
	__u32 ip;   // network order
	__u32 port; // network order, low 16 bits
};

// socket cookie -> original destination, between connect4 and sockops.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct dst4);
} pending SEC(".maps");

struct orig_key {
	__u64 netns;
	__u32 src_ip;   // network order
	__u32 src_port; // host order
};

// (netns cookie, app src ip, app src port) -> original destination.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct orig_key);
	__type(value, struct dst4);
} orig_dst SEC(".maps");

struct svc_key {
	__u32 vip;  // network order
	__u32 port; // host order
};

struct svc_backends {
	__u32 count;
	__u32 ip[MAX_BACKENDS];   // network order
	__u32 port[MAX_BACKENDS]; // host order
};

// ClusterIP:port -> backends, for connections ztunnel does not capture.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct svc_key);
	__type(value, struct svc_backends);
} services SEC(".maps");

// pod IP (network order) -> 1 for every pod whose inbound plaintext ztunnel
// steers. It outlives ztunnel's socket: when ztunnel is gone (killed, being
// replaced) the kernel drops the socket from inbound_plain, and connections to
// the pod are dropped instead of reaching the app in clear.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} inbound_pods SEC(".maps");

// pod IP (network order) -> ztunnel's 15006 socket in that pod's namespace.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32); // aya's SockHash wants a 4-byte value (the fd on insert)
} inbound_plain SEC(".maps");

// Splicing an enrolled pod's socket to its own ztunnel's socket (zero copy
// step 2): both ends of an app <-> ztunnel connection inside one pod's
// namespace go into `splice`, and sk_msg moves each sendmsg straight into
// the peer's receive queue, skipping the loopback TCP stack. Never pod to
// pod: the pair is always the pod's app and ztunnel's own socket, so
// identity and policy still apply. Ports in host order.
struct pair_key {
	__u64 netns;
	__u32 local_ip;  // network order
	__u32 remote_ip; // network order
	__u32 local_port;
	__u32 remote_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct pair_key);
	__type(value, __u32);
} splice SEC(".maps");

// Loader settings, written on every load (fresh or pinned): entry 0 holds
// SETTING_* bits. Read at run time rather than baked in at load, so a
// restarted ztunnel with other options changes what pinned programs do.
#define SETTING_SPLICE 1
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

static __always_inline int setting(__u32 bit)
{
	__u32 zero = 0;
	__u32 *s = bpf_map_lookup_elem(&settings, &zero);
	return s && (*s & bit);
}

// Per sending socket: whether its peer was in `splice` at its first send
// (SPLICE_ON: every send is redirected) or not (SPLICE_OFF: every send takes
// the TCP path). Deciding once keeps bytes in order: a socket never mixes
// redirected data with data still queued on the TCP path.
#define SPLICE_ON 1
#define SPLICE_OFF 2
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pair_key);
	__type(value, __u32);
} splice_mode SEC(".maps");

// A remote port as sock_ops / sk_msg report it (network order, in the upper
// half of the field on little-endian kernels) in host order.
static __always_inline __u32 remote_port_host(__u32 field)
{
	return field > 0xffff ? bpf_ntohl(field) : bpf_ntohs((__u16)field);
}

static __always_inline int is_ztunnel_port(__u16 port)
{
	return port == PORT_OUTBOUND || port == PORT_INBOUND_PLAIN || port == PORT_HBONE ||
	       port == 15000 || port == 15020 || port == 15021 || port == 15053;
}

static __always_inline void balance(struct bpf_sock_addr *ctx)
{
	struct svc_key k = { .vip = ctx->user_ip4, .port = bpf_ntohs((__u16)ctx->user_port) };
	struct svc_backends *b = bpf_map_lookup_elem(&services, &k);
	if (!b)
		return;
	__u32 n = b->count;
	if (n == 0 || n > MAX_BACKENDS)
		return;
	__u32 i = bpf_get_prandom_u32() % n;
	// Hide what the compiler knows about i so the bound check survives for the
	// verifier (it cannot bound the result of a modulo by itself).
	asm volatile("" : "+r"(i));
	if (i >= MAX_BACKENDS)
		return;
	ctx->user_ip4 = b->ip[i];
	ctx->user_port = bpf_htons((__u16)b->port[i]);
}

SEC("cgroup/connect4")
int ambit_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM_TYPE)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	if (sk->mark == ZTUNNEL_MARK)
		return 1;
	__u32 dst_ip = ctx->user_ip4;
	__u16 dst_port = bpf_ntohs((__u16)ctx->user_port);
	__u64 netns = bpf_get_netns_cookie(ctx);
	__u32 *mode = bpf_map_lookup_elem(&enrolled, &netns);
	if (!mode)
		return 1;
	if (*mode != MODE_CAPTURE) {
		balance(ctx);
		return 1;
	}
	if ((bpf_ntohl(dst_ip) >> 24) == 127 || is_ztunnel_port(dst_port))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct dst4 orig = { .ip = dst_ip, .port = ctx->user_port };
	bpf_map_update_elem(&pending, &cookie, &orig, BPF_ANY);
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(PORT_OUTBOUND);
	return 1;
}

// IPv6: ztunnel has no v6 listeners yet, so an enrolled pod's v6 TCP connects
// (other than to ::1) are refused rather than let through in clear. Fail closed.
SEC("cgroup/connect6")
int ambit_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM_TYPE)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->mark == ZTUNNEL_MARK)
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	__u32 *mode = bpf_map_lookup_elem(&enrolled, &netns);
	if (!mode || *mode != MODE_CAPTURE)
		return 1;
	// ::1
	if (ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 && ctx->user_ip6[2] == 0 &&
	    ctx->user_ip6[3] == bpf_htonl(1))
		return 1;
	return 0; // EPERM to the app
}

// An app <-> ztunnel connection inside an enrolled pod: the app's redirected
// connect to 127.0.0.1:15001 (either end), or ztunnel's connect from the pod
// IP to the app on the same IP (either end). Only with SETTING_SPLICE: a
// socket in a SOCKHASH runs the kernel's sockmap hooks on every send, receive
// and state change, which costs when nothing is redirected.
static __always_inline void maybe_splice(struct bpf_sock_ops *ops)
{
	if (!setting(SETTING_SPLICE))
		return;
	__u64 netns = bpf_get_netns_cookie(ops);
	__u32 *mode = bpf_map_lookup_elem(&enrolled, &netns);
	if (!mode || *mode != MODE_CAPTURE)
		return;
	struct pair_key k = {
		.netns = netns,
		.local_ip = ops->local_ip4,
		.remote_ip = ops->remote_ip4,
		.local_port = ops->local_port,
		.remote_port = remote_port_host(ops->remote_port),
	};
	__u32 lo = bpf_htonl(0x7f000001);
	int outbound = (k.remote_ip == lo && k.remote_port == PORT_OUTBOUND) ||
		       (k.local_ip == lo && k.local_port == PORT_OUTBOUND);
	int inbound = k.local_ip == k.remote_ip && k.local_ip != lo &&
		      !is_ztunnel_port((__u16)k.local_port) &&
		      !is_ztunnel_port((__u16)k.remote_port);
	if (!outbound && !inbound)
		return;
	bpf_sock_hash_update(ops, &splice, &k, BPF_ANY);
	bpf_map_delete_elem(&splice_mode, &k);
	bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int ambit_sockops(struct bpf_sock_ops *ops)
{
	if (ops->family != 2 /* AF_INET */)
		return 1;
	switch (ops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		maybe_splice(ops);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		__u64 cookie = bpf_get_socket_cookie(ops);
		struct dst4 *orig = bpf_map_lookup_elem(&pending, &cookie);
		if (!orig)
			return 1;
		struct orig_key k = {
			.netns = bpf_get_netns_cookie(ops),
			.src_ip = ops->local_ip4,
			.src_port = ops->local_port,
		};
		struct dst4 v = *orig;
		bpf_map_update_elem(&orig_dst, &k, &v, BPF_ANY);
		bpf_map_delete_elem(&pending, &cookie);
		bpf_sock_ops_cb_flags_set(ops, BPF_SOCK_OPS_STATE_CB_FLAG);
		break;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (ops->args[1] == BPF_TCP_CLOSE) {
			struct orig_key k = {
				.netns = bpf_get_netns_cookie(ops),
				.src_ip = ops->local_ip4,
				.src_port = ops->local_port,
			};
			bpf_map_delete_elem(&orig_dst, &k);
			if (!setting(SETTING_SPLICE))
				break;
			struct pair_key p = {
				.netns = k.netns,
				.local_ip = ops->local_ip4,
				.remote_ip = ops->remote_ip4,
				.local_port = ops->local_port,
				.remote_port = remote_port_host(ops->remote_port),
			};
			bpf_map_delete_elem(&splice_mode, &p);
		}
		break;
	}
	return 1;
}

SEC("sk_lookup")
int ambit_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != 6 /* TCP */ || ctx->family != 2 /* AF_INET */)
		return SK_PASS;
	// ztunnel's own connects to the app come from inside the pod, so their source
	// is the pod's own address (the kernel reports the pod interface, not lo, as
	// ingress for such local traffic); loopback is skipped too. Never steer them.
	if (ctx->ingress_ifindex == 1 || ctx->remote_ip4 == ctx->local_ip4)
		return SK_PASS;
	if (is_ztunnel_port((__u16)ctx->local_port))
		return SK_PASS;
	__u32 ip = ctx->local_ip4;
	struct bpf_sock *sk = bpf_map_lookup_elem(&inbound_plain, &ip);
	if (!sk) {
		// An enrolled pod whose ztunnel socket is gone: fail closed.
		if (bpf_map_lookup_elem(&inbound_pods, &ip))
			return SK_DROP;
		return SK_PASS;
	}
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}

// Every sendmsg on a spliced socket: into the peer's receive queue when the
// peer was spliced at this socket's first send, else the ordinary TCP path.
SEC("sk_msg")
int ambit_sk_msg(struct sk_msg_md *msg)
{
	struct pair_key self = {
		.netns = bpf_get_netns_cookie(msg),
		.local_ip = msg->local_ip4,
		.remote_ip = msg->remote_ip4,
		.local_port = msg->local_port,
		.remote_port = remote_port_host(msg->remote_port),
	};
	struct pair_key peer = {
		.netns = self.netns,
		.local_ip = self.remote_ip,
		.remote_ip = self.local_ip,
		.local_port = self.remote_port,
		.remote_port = self.local_port,
	};
	__u32 *mode = bpf_map_lookup_elem(&splice_mode, &self);
	if (mode) {
		if (*mode == SPLICE_ON)
			bpf_msg_redirect_hash(msg, &splice, &peer, BPF_F_INGRESS);
		return SK_PASS;
	}
	__u32 decided = SPLICE_OFF;
	if (bpf_msg_redirect_hash(msg, &splice, &peer, BPF_F_INGRESS) == SK_PASS)
		decided = SPLICE_ON;
	bpf_map_update_elem(&splice_mode, &self, &decided, BPF_ANY);
	return SK_PASS;
}
