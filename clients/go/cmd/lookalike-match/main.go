// Command lookalike-match compares two images with a lookalike server (MatchService.Match)
// and prints the result as JSON:
//
//	lookalike-match -server 127.0.0.1:50051 a.jpg b.jpg
//	{"similarity":0.83,"cosine":0.83,"model":"efficientnet-lite0"}
//
// On failure it prints the gRPC code and the ErrorInfo reason to stderr, e.g.
// "lookalike-match: error: INVALID_ARGUMENT IMAGE_UNDECODABLE: ...", then the same as a
// JSON line, and exits 1 (2 for a wrong command line). The token, when the server wants
// one, is read from LOOKALIKE_TOKEN.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/lookalike-dev/lookalike/clients/go/internal/cli"
	lookalikev1 "github.com/lookalike-dev/lookalike/clients/go/lookalikev1"
)

const prog = "lookalike-match"

type result struct {
	Similarity float32 `json:"similarity"`
	Cosine     float32 `json:"cosine"`
	Model      string  `json:"model"`
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	var opts cli.Options
	opts.Register(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s [-server HOST:PORT] [-timeout 2m] IMAGE_A IMAGE_B\n\n", prog)
		fmt.Fprintf(fs.Output(), "Prints {\"similarity\", \"cosine\", \"model\"} as JSON. Token: env LOOKALIKE_TOKEN.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return cli.ExitOK
		}
		return cli.ExitUsage
	}
	if fs.NArg() != 2 {
		return cli.Fail(os.Stderr, prog, cli.Usage("need exactly two image files, got %d arguments", fs.NArg()))
	}
	res, err := match(&opts, fs.Arg(0), fs.Arg(1))
	if err != nil {
		return cli.Fail(os.Stderr, prog, err)
	}
	if err := cli.PrintJSON(res); err != nil {
		return cli.Fail(os.Stderr, prog, err)
	}
	return cli.ExitOK
}

func match(opts *cli.Options, pathA, pathB string) (*result, error) {
	imageA, err := cli.ReadImage(pathA)
	if err != nil {
		return nil, err
	}
	imageB, err := cli.ReadImage(pathB)
	if err != nil {
		return nil, err
	}
	conn, err := opts.Dial()
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	ctx, cancel := opts.Context()
	defer cancel()
	resp, err := lookalikev1.NewMatchServiceClient(conn).Match(ctx, &lookalikev1.MatchRequest{
		ImageA: &lookalikev1.Image{Content: imageA},
		ImageB: &lookalikev1.Image{Content: imageB},
	})
	if err != nil {
		return nil, err
	}
	return &result{Similarity: resp.GetSimilarity(), Cosine: resp.GetCosine(), Model: resp.GetModel()}, nil
}
