package main

import (
	"fmt"

	"github.com/urfave/cli"
)

// The scripts are urfave/cli's (autocomplete/), bound to berthctl: they
// ask berthctl itself (--generate-bash-completion) for the words that
// can follow, so they stay in step with its commands and flags.
const bashCompletion = `# berthctl completion for bash: source <(berthctl completion bash)
_berthctl_complete() {
  local cur opts
  COMPREPLY=()
  cur="${COMP_WORDS[COMP_CWORD]}"
  if [[ "$cur" == "-"* ]]; then
    opts=$( "${COMP_WORDS[@]:0:$COMP_CWORD}" "${cur}" --generate-bash-completion 2>/dev/null )
  else
    opts=$( "${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null )
  fi
  COMPREPLY=( $(compgen -W "${opts}" -- "${cur}") )
  return 0
}
complete -o bashdefault -o default -o nospace -F _berthctl_complete berthctl
`

const zshCompletion = `#compdef berthctl
# berthctl completion for zsh: source <(berthctl completion zsh)
_berthctl_complete() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(_CLI_ZSH_AUTOCOMPLETE_HACK=1 ${words[@]:0:#words[@]-1} ${cur} --generate-bash-completion)}")
  else
    opts=("${(@f)$(_CLI_ZSH_AUTOCOMPLETE_HACK=1 ${words[@]:0:#words[@]-1} --generate-bash-completion)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _berthctl_complete berthctl
`

var completionCommand = cli.Command{
	Name:      "completion",
	Usage:     "print the shell completion script (source <(berthctl completion bash))",
	ArgsUsage: "bash|zsh",
	Action: func(ctx *cli.Context) error {
		switch ctx.Args().First() {
		case "bash":
			fmt.Print(bashCompletion)
		case "zsh":
			fmt.Print(zshCompletion)
		default:
			return fmt.Errorf("completion takes bash or zsh, not %q", ctx.Args().First())
		}
		return nil
	},
}
