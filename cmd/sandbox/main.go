// Command sandbox runs podidentity end to end on this machine (root, Linux): a real control
// plane, emulated Azure, nodes in network namespaces, MIC and NMI, and a demo. Ctrl-C stops
// everything and removes what it made. `sandbox down` stops a sandbox running elsewhere and
// removes leftovers of crashed runs. See docs/sandbox.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/podidentity/podidentity/internal/logging"
	"github.com/podidentity/podidentity/internal/sandbox"
	"github.com/podidentity/podidentity/internal/version"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sandbox:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var o sandbox.Options
	fs := pflag.NewFlagSet("sandbox", pflag.ContinueOnError)
	o.AddFlags(fs)
	showVersion := fs.Bool("version", false, "Print the version, commit and build date, then exit.")
	verbosity := fs.IntP("v", "v", 0, "Log verbosity of the sandbox itself (node agents, relays, emulator) on stderr.")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: sandbox [up] [flags]   start the sandbox (Ctrl-C stops it)\n       sandbox down [--temp-dir DIR]   stop running sandboxes, remove leftovers\n\nFlags:\n%s", fs.FlagUsages())
	}
	cmd := "up"
	if len(args) > 0 && (args[0] == "up" || args[0] == "down") {
		cmd, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if version.PrintIfRequested(*showVersion, "sandbox", os.Stdout) {
		return nil
	}
	o.Out = os.Stdout
	o.Log = textlogger.NewLogger(textlogger.NewConfig(textlogger.Verbosity(*verbosity), textlogger.Output(os.Stderr)))
	klog.SetLogger(o.Log)
	logging.RouteControllerRuntime() // its clients and envtest log through o.Log too

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	progress := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	if cmd == "down" {
		if err := sandbox.Down(ctx, o.TempRoot, progress); err != nil {
			return err
		}
		fmt.Println("no sandbox running; leftovers removed")
		return nil
	}
	if err := o.Validate(); err != nil {
		return err
	}
	sb, err := sandbox.Start(ctx, o)
	if err != nil {
		return err
	}
	runErr := sb.RunDemo(ctx)
	if runErr == nil {
		fmt.Println(sb.Summary())
		<-ctx.Done()
	}
	fmt.Println("\nstopping: removing pods, namespaces, processes and files ...")
	if err := sb.Close(); err != nil {
		return errors.Join(runErr, err)
	}
	fmt.Println("stopped; the machine is as it was")
	return runErr
}
