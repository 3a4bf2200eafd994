// Command chaos is the chaos/soak harness (`make chaos`, docs/reliability.md): it starts a
// sandbox, churns a workload of pods, labels, Deployments, Jobs and a CronJob, bindings and
// identities (standard, namespaced, service-principal and federated; edited in place), and pod IPs
// reused on purpose, injects faults drawn from a seed (MIC leader SIGKILL/SIGTERM, NMI
// SIGKILL/SIGTERM, ARM 429 storms, 5xx, slow writes and failed operations, IMDS "Identity not
// found", Azure AD 5xx and slowness, etcd paused, kube-apiserver restarted, a node deleted and
// re-added, an identity deleted from Azure and re-created), checks every token the pods got
// against its own watch of the bindings, and after a settle time checks what the VMs hold and
// that nothing is stuck. It writes a text and a JSON report and exits non-zero on any violation.
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/podidentity/podidentity/internal/chaos"
	"github.com/podidentity/podidentity/internal/logging"
	"github.com/podidentity/podidentity/internal/version"
)

// options are the harness's flags.
type options struct {
	duration, settle, grace, tokenBound, churn time.Duration
	seed                                       uint64
	intensity                                  float64
	repo, out                                  string
	keep, noNMI                                bool
}

func (o *options) addFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&o.duration, "duration", 2*time.Minute, "Length of the churn and fault phase (faults start after a tenth of it and stop a fifth before its end).")
	fs.Uint64Var(&o.seed, "seed", 0, "Seed of the fault schedule and the workload (0: random, printed).")
	fs.Float64Var(&o.intensity, "intensity", 4, "Faults per minute.")
	fs.DurationVar(&o.settle, "settle", 90*time.Second, "Longest wait after the run for every AzureAssignedIdentity to be Assigned before the final checks.")
	fs.DurationVar(&o.grace, "grace", chaos.DefaultGrace, "Watch-propagation grace: a token is allowed when the pod was bound to its identity within this of the request.")
	fs.DurationVar(&o.tokenBound, "token-bound", 45*time.Second, "Every bound running pod must have got a token within this at the end.")
	fs.DurationVar(&o.churn, "churn-period", time.Second, "Time between workload churn actions.")
	fs.StringVar(&o.repo, "repo", ".", "The podidentity checkout.")
	fs.StringVar(&o.out, "out", "_output/chaos", "Directory for report.txt, report.json and report.svg (recovery and memory over time).")
	fs.BoolVar(&o.keep, "keep-files", false, "Keep the sandbox's run directory (MIC/NMI logs).")
	fs.BoolVar(&o.noNMI, "self-check-without-nmi", false, "Check the checker: run without NMI, so pods reach IMDS directly and get identities they are not bound to; the run must then report violations.")
}

func (o *options) validate() error {
	if o.settle <= 0 || o.grace < 0 || o.tokenBound <= 0 || o.churn <= 0 {
		return errors.New("--settle, --token-bound and --churn-period must be positive and --grace not negative")
	}
	if _, err := chaos.NewSchedule(1, o.duration, o.intensity); err != nil {
		return fmt.Errorf("--duration/--intensity: %w", err)
	}
	return nil
}

func main() {
	code, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run(args []string) (int, error) {
	var o options
	fs := pflag.NewFlagSet("chaos", pflag.ContinueOnError)
	o.addFlags(fs)
	verbosity := fs.IntP("v", "v", 0, "Log verbosity of the harness and the sandbox on stderr.")
	showVersion := fs.Bool("version", false, "Print the version, commit and build date, then exit.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0, nil
		}
		return 0, err
	}
	if version.PrintIfRequested(*showVersion, "chaos", os.Stdout) {
		return 0, nil
	}
	if err := o.validate(); err != nil {
		return 0, err
	}
	if o.seed == 0 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		o.seed = binary.LittleEndian.Uint64(b[:]) >> 1
	}
	log := textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(*verbosity), textlogger.Output(os.Stderr)))
	klog.SetLogger(log)
	logging.RouteControllerRuntime()
	fmt.Printf("chaos: seed %d (rerun with CHAOS_SEED=%d), duration %s, %g faults/minute\n", o.seed, o.seed, o.duration, o.intensity)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := runChaos(ctx, o, log)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return 0, err
	}
	rep.WriteText(os.Stdout)
	if err := writeReport(o.out, rep); err != nil {
		return 0, err
	}
	fmt.Printf("reports: %s/report.{txt,json,svg}\n", o.out)
	if !rep.InvariantsHeld {
		return 1, nil
	}
	return 0, nil
}

func writeReport(dir string, rep *chaos.Report) error {
	tf, err := os.Create(filepath.Join(dir, "report.txt"))
	if err != nil {
		return err
	}
	rep.WriteText(tf)
	if err := tf.Close(); err != nil {
		return err
	}
	jf, err := os.Create(filepath.Join(dir, "report.json"))
	if err != nil {
		return err
	}
	if err := rep.WriteJSON(jf); err != nil {
		jf.Close()
		return err
	}
	if err := jf.Close(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.svg"), chaos.PlotSVG(rep), 0o644)
}
