# Kaldi-style option parsing, sourced by recipe scripts after their defaults:
#   --foo-bar VALUE or --foo-bar=VALUE sets the existing variable foo_bar;
#   --config FILE sources FILE (lines foo_bar=value) first;
#   --help / -h prints $help_message and exits.
# An option that names no existing variable is an error, so typos never pass
# silently; a boolean variable (true/false) only takes true or false; an option
# given without its value is an error, not the next option taken as its value.
# Positional arguments stop the parsing and are left in "$@".

while true; do
    [ $# -eq 0 ] && break
    case "$1" in
        --help|-h)
            echo -e "${help_message:-No help message for $0}" >&2
            exit 0
            ;;
        --*=*)
            _opt=${1%%=*}; _val=${1#*=}; shift
            set -- "${_opt}" "${_val}" "$@"
            ;;
        --*)
            _name=${1#--}; _name=${_name//-/_}
            if [ $# -lt 2 ]; then
                echo "$0: option $1 needs a value" >&2; exit 1
            fi
            # An option given without its value must not take the next option as its value (Kaldi's
            # parse_options.sh takes anything): a value that begins with -- is refused, except for an
            # *_opts variable (options for another command), whose value is refused only when it is one of
            # this script's own options (--tag --stage 3, --train-opts --stage 3).
            _next=${2%%=*}; _next=${_next#--}; _next=${_next//-/_}
            if [[ "$2" == --* ]] && { [[ "${_name}" != *_opts ]] || [ "${_next}" = config ] \
                    || declare -p "${_next}" >/dev/null 2>&1; }; then
                echo "$0: option $1 needs a value, got the option $2 (give $1 its value first)" >&2; exit 1
            fi
            if [ "${_name}" = config ]; then
                if [ ! -f "$2" ]; then echo "$0: config file $2 not found" >&2; exit 1; fi
                # shellcheck disable=SC1090
                . "$2"
                shift 2
                continue
            fi
            if ! declare -p "${_name}" >/dev/null 2>&1; then
                echo "$0: invalid option $1 (no variable '${_name}'; see --help)" >&2
                exit 1
            fi
            _old=${!_name}
            if [ "${_old}" = true ] || [ "${_old}" = false ]; then
                if [ "$2" != true ] && [ "$2" != false ]; then
                    echo "$0: option $1 takes true or false, got '$2'" >&2; exit 1
                fi
            fi
            printf -v "${_name}" '%s' "$2"
            shift 2
            ;;
        *)
            break
            ;;
    esac
done
unset _opt _val _name _old _next
true
