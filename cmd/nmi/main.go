// Command nmi is the podidentity node agent: it answers pods' IMDS token requests on behalf of
// their bound Azure identities. It accepts every flag of aad-pod-identity's NMI.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/logging"
	"github.com/podidentity/podidentity/internal/nmi"
	"github.com/podidentity/podidentity/internal/version"
)

// options are the command line; names are upstream NMI's.
type options struct {
	version                   bool
	listenAddress             string
	port                      int
	metadataIP                string
	metadataPort              int
	node                      string
	iptUpdateIntervalSec      int
	forceNamespaced           bool
	micNamespace              string
	probePort                 int
	retryAttemptsForCreated   int
	retryAttemptsForAssigned  int
	findIdentityRetryInterval int
	enableProfile             bool
	enableScaleFeatures       bool
	blockInstanceMetadata     bool
	metadataHeaderRequired    bool
	prometheusPort            int
	operationMode             string
	allowKubenet              bool
	kubeletConfig             string
	setRetryAfterHeader       bool
	enableConntrackDeletion   bool
	logFormat                 string
	customUserAgent           string
	// Ours.
	podRateLimit      float64
	podRateBurst      int
	prefetchResources []string
	cacheMaxEntries   int
	cniConfDir        string
	// Token-path policy (issue 11).
	micServiceAccount          string
	allowCrossNamespaceSecrets bool
	allowedADEndpoints         []string
	serveDeletingPods          bool
	requireSABindings          bool
	shutdownGrace              time.Duration
	// Federated identities (issue 15).
	federationPropagationWindow      time.Duration
	honorWorkloadIdentityAnnotations bool
	federationDefaultTenantID        string
	serviceAccountName               string
	// For benchmarks and tests on a developer machine only.
	redirect         bool
	cleanupIPTables  bool
	prepareNode      bool
	auxListenAddress string
}

// AddFlags registers every upstream NMI flag plus podidentity's own; getenv gives the defaults
// that come from the environment.
func (o *options) AddFlags(fs *pflag.FlagSet, getenv func(string) string) {
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.StringVar(&o.listenAddress, "nmi-listen-address", "127.0.0.1", "address NMI listens on (0.0.0.0 for Cilium local-redirect; DNAT still targets 127.0.0.1)")
	fs.IntVar(&o.port, "nmi-port", 2579, "port NMI listens on; also the DNAT target port")
	fs.StringVar(&o.metadataIP, "metadata-ip", "169.254.169.254", "IMDS address: DNAT match, proxy target and conntrack filter")
	fs.IntVar(&o.metadataPort, "metadata-port", 80, "IMDS port")
	fs.StringVar(&o.node, "node", getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.IntVar(&o.iptUpdateIntervalSec, "ipt-update-interval-sec", 60, "seconds between checks and repairs of the iptables redirect")
	fs.BoolVar(&o.forceNamespaced, "forceNamespaced", false, "namespaced mode: identities serve only pods of their own namespace (or env FORCENAMESPACED=true)")
	fs.StringVar(&o.micNamespace, "MICNamespace", "default", "namespace of MIC, whose pods get IMDS passthrough")
	fs.StringVar(&o.micServiceAccount, "mic-service-account", "aad-pod-id-mic-service-account", "ServiceAccount of MIC's pods in --MICNamespace: only pods running as it get IMDS passthrough (empty: none)")
	fs.BoolVar(&o.allowCrossNamespaceSecrets, "allow-cross-namespace-secrets", false, "let service-principal identities use a Secret in another namespace (spec.clientPassword.namespace); never for namespaced identities")
	fs.BoolVar(&o.requireSABindings, "require-service-account-bindings", false, "serve no identity through AzureIdentityBindings without spec.serviceAccountName (refused with a Warning event on the binding that says to set it); set the same on MIC")
	fs.BoolVar(&o.serveDeletingPods, "serve-deleting-pods", false, "keep serving a pod in its termination grace period (deletionTimestamp set, containers running) while no other pod claims its IP (upstream's behaviour; the new owner of a reused IP may not be visible yet)")
	fs.StringSliceVar(&o.allowedADEndpoints, "allowed-ad-endpoints", nil, "Azure AD authorities (https URLs or hosts) an identity's spec.adEndpoint may name besides the cloud's own")
	fs.IntVar(&o.probePort, "http-probe-port", 8080, "port of /healthz and /readyz")
	fs.IntVar(&o.retryAttemptsForCreated, "retry-attempts-for-created", 16, "standard mode: intervals to wait for a pod's assignment to appear")
	fs.IntVar(&o.retryAttemptsForAssigned, "retry-attempts-for-assigned", 4, "standard mode: further intervals to wait for it to become Assigned")
	fs.IntVar(&o.findIdentityRetryInterval, "find-identity-retry-interval", 5, "seconds per interval of those waits (waits are woken by the watch, not polled)")
	fs.BoolVar(&o.enableProfile, "enableProfile", false, "serve pprof on localhost:6060")
	fs.BoolVar(&o.enableScaleFeatures, "enableScaleFeatures", true, "accepted for compatibility: assignments are always watched by their nodename label")
	fs.BoolVar(&o.blockInstanceMetadata, "block-instance-metadata", false, "answer 403 on /metadata/instance")
	fs.BoolVar(&o.metadataHeaderRequired, "metadata-header-required", true, "refuse requests without the header Metadata: true")
	fs.IntVar(&o.prometheusPort, "prometheus-port", 9090, "port of /metrics")
	fs.StringVar(&o.operationMode, "operation-mode", nmi.ModeStandard, "standard (identities from MIC's assignments) or managed (from bindings; needs --forceNamespaced)")
	fs.BoolVar(&o.allowKubenet, "allow-network-plugin-kubenet", false, "run on kubenet nodes despite the ARP-spoofing risk")
	fs.StringVar(&o.kubeletConfig, "kubelet-config", "/etc/default/kubelet", "kubelet defaults file read by the kubenet check")
	fs.BoolVar(&o.setRetryAfterHeader, "set-retry-after-header", false, "answer 503 + Retry-After at once instead of waiting for an assignment")
	fs.BoolVar(&o.enableConntrackDeletion, "enable-conntrack-deletion", false, "accepted for compatibility: conntrack entries to the metadata address are always deleted after the redirect is installed or repaired")
	fs.StringVar(&o.customUserAgent, "custom-user-agent", "", "text appended to NMI's User-Agent (podidentity/nmi/<version>)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text (klog) or json (one object per line)")
	fs.Float64Var(&o.podRateLimit, "pod-rate-limit", 20, "token requests per second one pod may send that reach Azure (cache misses, passthrough); 0 = unlimited")
	fs.IntVar(&o.podRateBurst, "pod-rate-burst", 40, "burst of --pod-rate-limit")
	fs.StringSliceVar(&o.prefetchResources, "prefetch-resources", []string{"https://management.azure.com/"}, "resources fetched as soon as an identity is assigned (besides those pods asked for before)")
	fs.IntVar(&o.cacheMaxEntries, "token-cache-max-entries", 10000, "maximum cached (identity, resource) tokens")
	fs.StringVar(&o.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "CNI configuration directory read by the kubenet check")
	fs.BoolVar(&o.redirect, "redirect", true, "install the iptables redirect of IMDS traffic to NMI; false is for benchmarks and tests only (NMI then never touches iptables, sysctls or conntrack, and pods reach it only when called directly)")
	fs.StringVar(&o.auxListenAddress, "aux-listen-address", "", "address of the probe and Prometheus servers; empty listens on all interfaces (kubelet probes come to the node IP); 127.0.0.1 keeps them off the network (benchmarks, tests)")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 2*time.Second, "how long to keep serving after SIGTERM (/readyz answers 503 meanwhile); the iptables rules stay unless NMI's DaemonSet is being deleted")
	fs.DurationVar(&o.federationPropagationWindow, "federation-propagation-window", 5*time.Minute, // real Azure AD takes seconds to minutes to see a new credential
		"federated identities: Azure AD's \"no matching federated credential\" within this long of the newest creation of the identity, its binding and the pod is answered 503 + Retry-After (a new credential takes a while to be seen); later 403 with the az command that creates it (0: always 403)")
	fs.BoolVar(&o.honorWorkloadIdentityAnnotations, "honor-workload-identity-annotations", false, "give a pod that no binding selects the federated identity its ServiceAccount's azure.workload.identity/client-id (and tenant-id) annotations name, as Azure Workload Identity does")
	fs.StringVar(&o.federationDefaultTenantID, "federation-default-tenant-id", "", "tenant of federated identities without one: implicit Workload Identity identities whose ServiceAccount has no azure.workload.identity/tenant-id annotation (NMI reads no azure.json)")
	fs.StringVar(&o.serviceAccountName, "service-account-name", getenv("SERVICE_ACCOUNT_NAME"), "NMI's own ServiceAccount (default $SERVICE_ACCOUNT_NAME), whose tokens broker identities (spec.federation.subject Broker) present; with POD_NAME, POD_NAMESPACE and POD_UID from the downward API")
	fs.BoolVar(&o.cleanupIPTables, "cleanup-iptables", false, "remove NMI's iptables rules (nat chain aad-metadata, filter chain aad-metadata-localnet, their jumps) from this node and exit; for nodes left with them after an uninstall")
	fs.BoolVar(&o.prepareNode, "prepare-node", false, "install the localnet guard (filter chain aad-metadata-localnet, first in INPUT), then turn on net.ipv4.conf.all.route_localnet, and exit; needs a privileged container (the chart's nmi.prepareNode init container) on nodes where route_localnet is 0. Installs no DNAT: NMI does")
}

func (o *options) validate() error {
	var errs []error
	if o.port <= 0 || o.port > 65535 || o.probePort <= 0 || o.probePort > 65535 || o.prometheusPort <= 0 || o.prometheusPort > 65535 {
		errs = append(errs, errors.New("--nmi-port, --http-probe-port and --prometheus-port must be 1-65535"))
	}
	if net.ParseIP(o.listenAddress) == nil {
		errs = append(errs, fmt.Errorf("--nmi-listen-address=%q is not an IP address", o.listenAddress))
	}
	if o.iptUpdateIntervalSec <= 0 {
		errs = append(errs, errors.New("--ipt-update-interval-sec must be positive"))
	}
	if o.auxListenAddress != "" && net.ParseIP(o.auxListenAddress) == nil {
		errs = append(errs, fmt.Errorf("--aux-listen-address=%q is not an IP address: use one, or leave it empty for all interfaces", o.auxListenAddress))
	}
	if o.federationPropagationWindow < 0 {
		errs = append(errs, fmt.Errorf("--federation-propagation-window=%s must not be negative (0: no window)", o.federationPropagationWindow))
	}
	if o.logFormat != "text" && o.logFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format=%q: use text or json", o.logFormat))
	}
	return errors.Join(errs...)
}

// config is the nmi.Config of the flags (FORCENAMESPACED from getenv); Run's wiring is added by
// start.
func (o *options) config(getenv func(string) string) nmi.Config {
	c := nmi.Config{
		NodeName: o.node, MetadataIP: o.metadataIP, MetadataPort: o.metadataPort,
		MetadataHeaderRequired: o.metadataHeaderRequired, BlockInstanceMetadata: o.blockInstanceMetadata,
		OperationMode: o.operationMode, MICNamespace: o.micNamespace, MICServiceAccount: o.micServiceAccount,
		AllowCrossNamespaceSecrets: o.allowCrossNamespaceSecrets, AllowedADEndpoints: o.allowedADEndpoints, RequireServiceAccountBindings: o.requireSABindings,
		ServeDeletingPods:       o.serveDeletingPods,
		ForceNamespaced:         o.forceNamespaced || strings.EqualFold(getenv(aadv1.ForceNamespacedEnv), "true"),
		RetryAttemptsForCreated: o.retryAttemptsForCreated, RetryAttemptsForAssigned: o.retryAttemptsForAssigned,
		FindIdentityRetryInterval: time.Duration(o.findIdentityRetryInterval) * time.Second,
		SetRetryAfterHeader:       o.setRetryAfterHeader, PodRateLimit: o.podRateLimit, PodRateBurst: o.podRateBurst,
		PrefetchResources: o.prefetchResources, Cache: nmi.CacheOptions{MaxEntries: o.cacheMaxEntries},
		FederationPropagationWindow: o.federationPropagationWindow, HonorWorkloadIdentityAnnotations: o.honorWorkloadIdentityAnnotations,
		FederationDefaultTenantID: o.federationDefaultTenantID,
	}
	c.SetDefaults()
	return c
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	klog.Flush()
	if err != nil {
		ce := cmdError{err: err, code: 1}
		_ = errors.As(err, &ce)
		if !ce.logged {
			fmt.Fprintln(os.Stderr, "nmi:", err)
		}
		os.Exit(ce.code)
	}
}

// cmdError is run's failure with main's exit code (2: bad command line, as pflag's and klog's
// own); logged says run has logged it already, so main does not print it again.
type cmdError struct {
	err    error
	code   int
	logged bool
}

func (e cmdError) Error() string { return e.err.Error() }
func (e cmdError) Unwrap() error { return e.err }

// run is NMI's whole command: flags from args, environment from getenv, --version and --help
// output to stdout. It serves until ctx ends (SIGTERM), then stops as nmi.Agent.Run describes.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var o options
	fs := pflag.NewFlagSet("nmi", pflag.ContinueOnError)
	fs.SetOutput(stdout)
	o.AddFlags(fs, getenv)
	gofs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(gofs)
	fs.AddGoFlagSet(gofs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return cmdError{err: fmt.Errorf("%w (nmi --help lists the flags)", err), code: 2}
	}
	if version.PrintIfRequested(o.version, "nmi", stdout) {
		return nil
	}
	if err := logging.Setup(o.logFormat, logging.Verbosity(gofs), os.Stderr); err != nil {
		return cmdError{err: err, code: 2}
	}
	log := klog.Background().WithName("nmi")
	if o.cleanupIPTables && o.prepareNode {
		return cmdError{err: errors.New("--cleanup-iptables and --prepare-node exclude each other: use one"), code: 2}
	}
	if o.prepareNode {
		if err := prepareNode(&o, log.WithName("iptables")); err != nil {
			log.Error(err, "nmi --prepare-node failed")
			return cmdError{err: err, code: 1, logged: true}
		}
		return nil
	}
	if o.cleanupIPTables {
		if err := cleanupIPTables(log.WithName("iptables")); err != nil {
			log.Error(err, "nmi --cleanup-iptables failed")
			return cmdError{err: err, code: 1, logged: true}
		}
		return nil
	}
	if err := start(ctx, &o, getenv, log); err != nil {
		log.Error(err, "nmi failed")
		return cmdError{err: err, code: 1, logged: true}
	}
	return nil
}

// start checks the node, starts the probe and metrics servers and runs nmi.Run with the
// iptables keeper as its Redirect.
func start(ctx context.Context, o *options, getenv func(string) string, log logr.Logger) error {
	if err := o.validate(); err != nil {
		return err
	}
	cfg := o.config(getenv)
	if err := cfg.Validate(); err != nil {
		return err
	}
	// Service principals use the cloud MIC uses (AZURE_ENVIRONMENT_FILEPATH / CLOUD).
	if err := cfg.LoadCloud(getenv); err != nil {
		return err
	}
	// Broker identities present NMI's own token, bound to NMI's pod (downward API env vars).
	cfg.Broker = nmi.BrokerFromEnv(getenv, o.serviceAccountName)
	if !o.allowKubenet {
		facts, err := nmi.ReadNetworkFacts(o.kubeletConfig, o.cniConfDir)
		if err != nil {
			return err
		}
		if err := nmi.CheckNetwork(facts); err != nil {
			return err
		}
	}

	// KUBECONFIG env as upstream; in-cluster config otherwise.
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: []string{clientcmd.RecommendedHomeFile}}
	if p := getenv(clientcmd.RecommendedConfigPathEnvVar); p != "" {
		rules.Precedence, rules.WarnIfAllMissing = filepath.SplitList(p), true
	}
	restCfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return fmt.Errorf("building the Kubernetes client config (in-cluster, or $KUBECONFIG): %w", err)
	}
	restCfg.UserAgent = version.UserAgent("nmi", o.customUserAgent)
	kc, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("creating the Kubernetes client: %w", err)
	}

	// The probe and metrics servers outlive ctx: /readyz says 503 while NMI winds down.
	var rdy readiness
	auxCtx, auxStop := context.WithCancel(context.Background())
	defer auxStop()
	go func() { <-ctx.Done(); rdy.stopping.Store(true) }()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	go serve(auxCtx, log, net.JoinHostPort(o.auxListenAddress, strconv.Itoa(o.probePort)), rdy.handler())
	go serve(auxCtx, log, net.JoinHostPort(o.auxListenAddress, strconv.Itoa(o.prometheusPort)), promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if o.enableProfile {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		go serve(ctx, log, "localhost:6060", mux)
	}

	cfg.RestConfig, cfg.KubeClient = restCfg, kc // KubeClient: TokenRequests for federated identities
	cfg.ListenAddress = net.JoinHostPort(o.listenAddress, strconv.Itoa(o.port))
	cfg.ShutdownGrace, cfg.Metrics, cfg.Log = o.shutdownGrace, nmi.NewMetrics(reg), log
	cfg.Redirect = func(ctx context.Context) error {
		// nmi.Run calls this once the watches synced and the token server serves.
		rdy.synced.Store(true)
		if !o.redirect {
			// Benchmarks and tests: no iptables, sysctl or conntrack change on the machine
			// running NMI; "ready" then means the watches synced.
			log.Info("--redirect=false: not installing the iptables redirect; only clients calling NMI's address directly are served")
			rdy.redirected.Store(true)
			<-ctx.Done()
			return nil
		}
		keeper, err := newKeeper(ctx, o, kc, getenv, log.WithName("iptables"))
		if err != nil {
			return err
		}
		// Returns once ctx ended and the keeper decided (kept the rules, or removed them on
		// uninstall).
		return keeper.Run(ctx, func() { rdy.redirected.Store(true) })
	}
	return nmi.Run(ctx, cfg)
}

func serve(ctx context.Context, log logr.Logger, addr string, h http.Handler) {
	s := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { <-ctx.Done(); _ = s.Close() }()
	if err := s.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error(err, "auxiliary server failed", "addr", addr)
	}
}
