defmodule Sandbox.SecurityController.Operations.Tables do
  @moduledoc false
  # The tables of Sandbox.SecurityController.Operations, built once at
  # compile time (that module holds them as a literal).

  # ---- helpers to write the tables --------------------------------------

  # "f/1 g/2" -> [{:f, 1}, {:g, 2}]
  defp fas(names) do
    for name <- String.split(names) do
      # The last "/" separates the arity ("//2" is the division operator).
      [a | rest] = name |> String.split("/") |> Enum.reverse()
      {rest |> Enum.reverse() |> Enum.join("/") |> String.to_atom(), String.to_integer(a)}
    end
  end

  defp entries(specs) do
    for {class, verdict, names} <- specs, fa <- fas(names), into: %{} do
      {fa, {class, verdict}}
    end
  end

  # ---- whole modules ------------------------------------------------------

  @exceptions ~w(ArgumentError ArithmeticError BadArityError BadBooleanError BadFunctionError
                 BadMapError BadStructError CaseClauseError CondClauseError Enum.EmptyError
                 Enum.OutOfBoundsError ErlangError File.Error File.CopyError File.LinkError
                 File.RenameError FunctionClauseError Inspect.Error KeyError MatchError
                 Protocol.UndefinedError RuntimeError SystemLimitError TryClauseError
                 UndefinedFunctionError UnicodeConversionError WithClauseError
                 Regex.CompileError URI.Error Version.InvalidRequirementError
                 Version.InvalidVersionError OptionParser.ParseError IO.StreamError
                 Code.LoadError)

  @basic_modules ~w(Access Enum Enumerable Collectable Inspect Inspect.Algebra Inspect.Opts
                    String.Chars List.Chars Keyword Map MapSet Range Stream Tuple Exception
                    Calendar Calendar.ISO Date Date.Range DateTime NaiveDateTime Time Bitwise
                    Base Version URI Regex OptionParser Macro Macro.Env Function Record
                    Kernel.Utils Protocol.UndefinedError IO IO.ANSI Inspect.Any Path
                    GenServer.Behaviour Task.Supervised)

  defp whole do
    elixir = Enum.map(@basic_modules ++ @exceptions, &Module.concat([&1]))

    Map.new(elixir, &{&1, {:basic_otp, :allowed, %{}}})
    |> Map.merge(%{
      Integer => {:math, :allowed, %{}},
      Float => {:math, :allowed, %{}},
      :math => {:math, :allowed, %{}},
      :rand => {:math, :allowed, %{}},
      :lists => {:basic_otp, :allowed, %{}},
      :maps => {:basic_otp, :allowed, %{}},
      :proplists => {:basic_otp, :allowed, %{}},
      :orddict => {:basic_otp, :allowed, %{}},
      :ordsets => {:basic_otp, :allowed, %{}},
      :sets => {:basic_otp, :allowed, %{}},
      :gb_sets => {:basic_otp, :allowed, %{}},
      :gb_trees => {:basic_otp, :allowed, %{}},
      :dict => {:basic_otp, :allowed, %{}},
      :queue => {:basic_otp, :allowed, %{}},
      :array => {:basic_otp, :allowed, %{}},
      :io_lib => {:basic_otp, :allowed, %{}},
      :io => {:basic_otp, :allowed, %{}},
      :io_lib_format => {:basic_otp, :allowed, %{}},
      :calendar => {:basic_otp, :allowed, %{}},
      :erl_anno => {:basic_otp, :allowed, %{}},
      :uri_string => {:string, :allowed, %{}},
      :string => {:string, :allowed, %{}},
      :unicode => {:string, :allowed, %{}},
      :unicode_util => {:string, :allowed, %{}},
      :re => {:string, :allowed, %{}},
      String.Unicode => {:string, :allowed, %{}},
      String.Break => {:string, :allowed, %{}},
      :binary => {:string, :allowed, %{}},
      :base64 => {:string, :allowed, %{}},
      :crypto =>
        {:math, :allowed,
         entries([
           {:all, :forbidden,
            "start/0 stop/0 enable_fips_mode/1 engine_load/3 engine_load/4 engine_unload/1 " <>
              "engine_unload/2 engine_add/1 engine_remove/1 engine_register/2 " <>
              "engine_unregister/2 engine_ctrl_cmd_string/3 engine_ctrl_cmd_string/4 " <>
              "ensure_engine_loaded/2 ensure_engine_loaded/3 ensure_engine_unloaded/1 " <>
              "ensure_engine_unloaded/2"}
         ])},
      String => {:string, :allowed, %{{:to_atom, 1} => {:basic_otp, {:guarded, [:new_atom]}}}},
      # Makes an external fun as :erlang.make_fun/3 does (and takes an
      # export-table entry for a function not exported yet).
      Function =>
        {:basic_otp, :allowed, %{{:capture, 3} => {:basic_otp, {:guarded, [:make_fun]}}}},
      List => {:basic_otp, :allowed, %{{:to_atom, 1} => {:basic_otp, {:guarded, [:new_atom]}}}},
      Module =>
        {:basic_otp, :forbidden,
         entries([
           {:code_load, {:guarded, [:code_load]}, "create/3"},
           {:basic_otp, :allowed,
            "concat/1 concat/2 safe_concat/1 safe_concat/2 split/1 reserved_attributes/0 " <>
              "__get_attribute__/4 __put_attribute__/5 get_attribute/2 get_attribute/3 " <>
              "put_attribute/3 register_attribute/3 delete_attribute/2 has_attribute?/2 " <>
              "open?/1 defines?/2 defines?/3 definitions_in/1 definitions_in/2 " <>
              "attributes_in/1 make_overridable/2 overridable?/2 overridables_in/1 " <>
              "spec_to_callback/2 defines_type?/2 add_doc/5 add_doc/6 get_definition/2 " <>
              "get_definition/3 delete_definition/2 compile_definition_attributes/6 " <>
              "check_derive_behaviours_and_impls/4"}
         ])},
      :timer =>
        {:basic_otp, :allowed,
         entries([
           {:basic_otp, {:guarded, [{:mfa, 2, 3, 4}]}, "apply_after/4 apply_interval/4"},
           {:basic_otp, {:guarded, [:send]},
            "send_after/2 send_after/3 send_interval/2 send_interval/3"},
           {:basic_otp, {:guarded, [{:member, 1}]},
            "exit_after/2 exit_after/3 kill_after/1 kill_after/2"}
         ])}
    })
  end

  # ---- function by function ----------------------------------------------

  @erlang_pure """
  !/2 */2 +/1 +/2 ++/2 -/1 -/2 --/2 //2 /=/2 </2 =/=/2 =:=/2 =</2 ==/2 >/2 >=/2 abs/1
  adler32/1 adler32/2 adler32_combine/3 alias/0 alias/1 and/2 append/2 append_element/2
  atom_to_binary/1 atom_to_binary/2 atom_to_list/1 band/2 binary_part/2 binary_part/3
  binary_to_existing_atom/1 binary_to_existing_atom/2 binary_to_float/1 binary_to_integer/1
  binary_to_integer/2 binary_to_list/1 binary_to_list/3 bit_size/1 bitstring_to_list/1 bnot/1
  bor/2 bsl/2 bsr/2 bump_reductions/1 bxor/2 byte_size/1 cancel_timer/1 cancel_timer/2 ceil/1
  convert_time_unit/3 crc32/1 crc32/2 crc32_combine/3 date/0 decode_packet/3 delete_element/2
  demonitor/1 demonitor/2 div/2 element/2 erase/0 erase/1 error/1 error/2 error/3 exit/1
  external_size/1 external_size/2 float/1 float_to_binary/1 float_to_binary/2 float_to_list/1
  float_to_list/2 floor/1 fun_info/1 fun_info/2 fun_info_mfa/1 fun_to_list/1
  garbage_collect/0 get/0 get/1 get_keys/0 get_keys/1 get_module_info/1
  get_module_info/2 group_leader/0 hd/1 hibernate/3 insert_element/3 integer_to_binary/1
  integer_to_binary/2 integer_to_list/1 integer_to_list/2 iolist_size/1 iolist_to_binary/1
  iolist_to_iovec/1 is_alive/0 is_atom/1 is_binary/1 is_bitstring/1 is_boolean/1 is_builtin/3
  is_float/1 is_function/1 is_function/2 is_integer/1 is_list/1 is_map/1 is_map_key/2
  is_number/1 is_pid/1 is_port/1 is_process_alive/1 is_record/2 is_record/3 is_reference/1
  is_tuple/1 length/1 list_to_binary/1 list_to_bitstring/1 list_to_existing_atom/1
  list_to_float/1 list_to_integer/1 list_to_integer/2 list_to_tuple/1 localtime/0
  localtime_to_universaltime/1 localtime_to_universaltime/2 make_ref/0 make_tuple/2
  make_tuple/3 map_get/2 map_size/1 max/2 md5/1 md5_final/1 md5_init/0 md5_update/2 min/2
  module_info/0 module_info/1 monitor/2 monitor/3 monotonic_time/0
  monotonic_time/1 nif_error/1 nif_error/2 node/0 node/1 not/1 now/0 or/2 phash/2 phash2/1
  phash2/2 pid_to_list/1 port_to_list/1 posixtime_to_universaltime/1 put/2 raise/3
  read_timer/1 read_timer/2 ref_to_list/1 rem/2 round/1 self/0 setelement/3 size/1
  split_binary/2 statistics/1 subtract/2 system_info/1 system_time/0 system_time/1
  term_to_binary/1 term_to_binary/2 term_to_iovec/1 term_to_iovec/2 throw/1 time/0
  time_offset/0 time_offset/1 timestamp/0 tl/1 trunc/1 tuple_size/1 tuple_to_list/1
  unalias/1 unique_integer/0 unique_integer/1 universaltime/0 universaltime_to_localtime/1
  universaltime_to_posixtime/1 xor/2 yield/0 process_flag/2 memory/0 memory/1 nodes/0
  nodes/1 nodes/2 loaded/0 pre_loaded/0 match_spec_test/3 registered/0
  """

  defp erlang do
    entries([
      {:basic_otp, :allowed, @erlang_pure},
      {:basic_otp, {:guarded, [:send]}, "send/2 send/3 send_nosuspend/2 send_nosuspend/3"},
      {:basic_otp, {:guarded, [{:member, 2}]},
       "send_after/3 send_after/4 start_timer/3 start_timer/4"},
      {:basic_otp, {:guarded, [{:member, 1}]},
       "exit/2 link/1 suspend_process/1 suspend_process/2 resume_process/1 garbage_collect/1 " <>
         "garbage_collect/2 process_info/1 process_info/2 process_flag/3 exit_signal/2"},
      {:basic_otp, :allowed, "unlink/1 whereis/1 unregister/1"},
      {:basic_otp, {:guarded, [{:member, 2}]}, "register/2"},
      {:basic_otp, {:guarded, [:group_leader]}, "group_leader/2"},
      {:basic_otp, {:guarded, [:new_atom]}, "binary_to_atom/1 binary_to_atom/2 list_to_atom/1"},
      {:basic_otp, {:guarded, [:binary_to_term]}, "binary_to_term/1 binary_to_term/2"},
      {:basic_otp, {:guarded, [:spawn, {:fun, 1}]},
       "spawn/1 spawn_link/1 spawn_monitor/1 spawn_opt/2"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]},
       "spawn/3 spawn_link/3 spawn_monitor/3 spawn_opt/4"},
      {:basic_otp, {:guarded, [{:fun, 1}]}, "apply/2"},
      {:basic_otp, {:guarded, [{:mfa, 1, 2, 3}]}, "apply/3"},
      {:basic_otp, {:guarded, [:make_fun]}, "make_fun/3"},
      {:basic_otp, {:guarded, [{:map_module, 1}]}, "function_exported/3 module_loaded/1"},
      {:basic_otp, {:guarded, [:spawn, {:fun, 1}]}, "spawn_request/1 spawn_request/2"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]}, "spawn_request/3 spawn_request/4"},
      {:basic_otp, :allowed, "spawn_request_abandon/1"},
      # Only the :all set: the VM, distribution, code, tracing, ports.
      {:all, :forbidden,
       "halt/0 halt/1 halt/2 system_flag/2 system_monitor/0 system_monitor/1 system_monitor/2 " <>
         "system_profile/0 system_profile/2 trace/3 trace_pattern/2 trace_pattern/3 " <>
         "trace_info/2 trace_delivered/1 seq_trace/2 seq_trace_info/1 seq_trace_print/1 " <>
         "seq_trace_print/2 open_port/2 port_call/2 port_call/3 port_close/1 " <>
         "port_command/2 port_command/3 port_connect/2 port_control/3 port_get_data/1 " <>
         "port_info/1 port_info/2 port_set_data/2 ports/0 processes/0 load_module/2 " <>
         "delete_module/1 purge_module/1 check_old_code/1 check_process_code/2 " <>
         "check_process_code/3 prepare_loading/2 finish_loading/1 load_nif/2 " <>
         "call_on_load_function/1 finish_after_on_load/2 has_prepared_code_on_load/1 " <>
         "set_cookie/1 set_cookie/2 get_cookie/0 get_cookie/1 disconnect_node/1 " <>
         "monitor_node/2 monitor_node/3 dmonitor_node/3 setnode/2 setnode/3 " <>
         "spawn/2 spawn/4 spawn_link/2 spawn_link/4 spawn_monitor/2 spawn_monitor/4 " <>
         "spawn_opt/3 spawn_opt/5 spawn_request/5 list_to_pid/1 list_to_port/1 " <>
         "list_to_ref/1 display/1 display_nl/0 display_string/1 " <>
         "process_display/2 alloc_info/1 alloc_sizes/1 set_cpu_topology/1 " <>
         "format_cpu_topology/1 gather_gc_info_result/1 garbage_collect_message_area/0 " <>
         "delay_trap/2 dist_ctrl_get_data/1 dist_ctrl_get_data_notification/1 " <>
         "dist_ctrl_get_opt/2 dist_ctrl_input_handler/2 dist_ctrl_put_data/2 " <>
         "dist_ctrl_set_opt/3 dist_get_stat/1 dt_append_vm_tag_data/1 dt_get_tag/0 " <>
         "dt_get_tag_data/0 dt_prepend_vm_tag_data/1 dt_put_tag/1 dt_restore_tag/1 " <>
         "dt_spread_tag/1"}
    ])
  end

  defp process do
    entries([
      {:basic_otp, :allowed,
       "alive?/1 cancel_timer/1 cancel_timer/2 delete/1 demonitor/1 demonitor/2 flag/2 get/0 " <>
         "get/1 get/2 get_keys/0 get_keys/1 group_leader/0 hibernate/3 monitor/1 put/2 " <>
         "read_timer/1 sleep/1 unlink/1 unregister/1 whereis/1 registered/0"},
      {:basic_otp, {:guarded, [{:member, 1}]},
       "exit/2 link/1 info/1 info/2 flag/3 register/2 send_after/3 send_after/4"},
      {:basic_otp, {:guarded, [:send]}, "send/3"},
      {:basic_otp, {:guarded, [:group_leader]}, "group_leader/2"},
      {:basic_otp, {:guarded, [:spawn, {:fun, 1}]}, "spawn/2"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]}, "spawn/4"},
      {:all, :forbidden, "list/0"}
    ])
  end

  defp kernel do
    pure = """
    !=/2 !==/2 */2 **/2 +/1 +/2 ++/2 -/1 -/2 --/2 //2 </2 <=/2 ==/2 ===/2 =~/2 >/2 >=/2
    abs/1 binary_part/3 binary_slice/2 binary_slice/3 bit_size/1 byte_size/1 ceil/1 div/2
    elem/2 exit/1 floor/1 get_and_update_in/3 get_in/2 hd/1 inspect/1
    inspect/2 is_atom/1 is_binary/1 is_bitstring/1 is_boolean/1 is_float/1 is_function/1
    is_function/2 is_integer/1 is_list/1 is_map/1 is_map_key/2 is_number/1 is_pid/1
    is_port/1 is_reference/1 is_tuple/1 length/1 make_ref/0 map_size/1
    max/2 min/2 node/0 node/1 not/1 pop_in/2 put_elem/3 put_in/3 rem/2 round/1 self/0
    throw/1 tl/1 trunc/1 tuple_size/1 update_in/3
    """

    entries([
      {:basic_otp, :allowed, pure},
      {:basic_otp, {:guarded, [:send]}, "send/2"},
      {:basic_otp, {:guarded, [{:map_module, 1}]},
       "struct/1 struct/2 struct!/1 struct!/2 function_exported?/3 macro_exported?/3"},
      {:basic_otp, {:guarded, [{:fun, 1}]}, "apply/2"},
      {:basic_otp, {:guarded, [{:mfa, 1, 2, 3}]}, "apply/3"},
      {:basic_otp, {:guarded, [:spawn, {:fun, 1}]}, "spawn/1 spawn_link/1 spawn_monitor/1"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]}, "spawn/3 spawn_link/3 spawn_monitor/3"}
    ])
  end

  defp gen_server do
    entries([
      {:basic_otp, {:guarded, [{:module, 1}]}, "start/2 start/3 start_link/2 start_link/3"},
      {:basic_otp, {:guarded, [{:server, 1}]},
       "call/2 call/3 cast/2 stop/1 stop/2 stop/3 whereis/1"},
      {:basic_otp, :allowed, "reply/2 format_report/1"},
      {:all, :forbidden, "abcast/2 abcast/3 multi_call/2 multi_call/3 multi_call/4"}
    ])
  end

  defp erl_gen_server do
    entries([
      {:basic_otp, {:guarded, [{:module, 1}]}, "start/3 start_link/3 start_monitor/3"},
      {:basic_otp, {:guarded, [{:module, 2}]}, "start/4 start_link/4 start_monitor/4"},
      {:basic_otp, {:guarded, [{:server, 1}]},
       "call/2 call/3 cast/2 stop/1 stop/3 send_request/2 send_request/4"},
      {:basic_otp, :allowed,
       "reply/2 wait_response/2 wait_response/3 receive_response/2 receive_response/3 " <>
         "check_response/2 check_response/3 reqids_new/0 reqids_size/1 reqids_add/3 " <>
         "reqids_to_list/1 enter_loop/3 enter_loop/4 enter_loop/5"},
      {:all, :forbidden, "abcast/2 abcast/3 multi_call/2 multi_call/3 multi_call/4"}
    ])
  end

  defp supervisor do
    entries([
      {:basic_otp, {:guarded, [{:module, 1}]}, "start_link/2 start_link/3"},
      {:basic_otp, {:guarded, [{:child_spec, 1}]}, "init/2 child_spec/2"},
      {:basic_otp, {:guarded, [{:server, 1}, {:child_spec, 2}]}, "start_child/2"},
      {:basic_otp, {:guarded, [{:server, 1}]},
       "count_children/1 delete_child/2 restart_child/2 stop/1 stop/2 stop/3 " <>
         "terminate_child/2 which_children/1"}
    ])
  end

  defp dynamic_supervisor do
    entries([
      {:basic_otp, {:guarded, [{:module, 1}]}, "start_link/2 start_link/3"},
      {:basic_otp, :allowed,
       "start_link/1 child_spec/1 init/1 __struct__/0 __struct__/1 code_change/3 " <>
         "format_report/1 format_status/2 handle_call/3 handle_cast/2 handle_info/2 terminate/2"},
      {:basic_otp, {:guarded, [{:server, 1}, {:child_spec, 2}]}, "start_child/2"},
      {:basic_otp, {:guarded, [{:server, 1}]},
       "count_children/1 stop/1 stop/2 stop/3 terminate_child/2 which_children/1"}
    ])
  end

  defp agent do
    entries([
      {:basic_otp, {:guarded, [:spawn, {:fun, 1}]}, "start/1 start/2 start_link/1 start_link/2"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]},
       "start/3 start/4 start_link/3 start_link/4"},
      {:basic_otp, {:guarded, [{:server, 1}, {:fun, 2}]},
       "cast/2 get/2 get/3 get_and_update/2 get_and_update/3 update/2 update/3"},
      {:basic_otp, {:guarded, [{:server, 1}, {:mfa, 2, 3, 4}]},
       "cast/4 get/4 get/5 get_and_update/4 get_and_update/5 update/4 update/5"},
      {:basic_otp, {:guarded, [{:server, 1}]}, "stop/1 stop/2 stop/3"},
      {:basic_otp, :allowed, "child_spec/1"}
    ])
  end

  defp task do
    entries([
      {:basic_otp, {:guarded, [:spawn, {:fun, 1}]}, "async/1 start/1 start_link/1"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]}, "async/3 start/3 start_link/3"},
      {:basic_otp, {:guarded, [:spawn, {:fun, 2}]}, "async_stream/2 async_stream/3"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 2, 3, 4}]}, "async_stream/4 async_stream/5"},
      {:basic_otp, :allowed,
       "__struct__/0 __struct__/1 await/1 await/2 await_many/1 await_many/2 child_spec/1 " <>
         "completed/1 find/2 ignore/1 shutdown/1 shutdown/2 yield/1 yield/2 yield_many/1 " <>
         "yield_many/2"}
    ])
  end

  defp registry do
    entries([
      {:basic_otp, :allowed, "child_spec/1 start_link/1 start_link/2 start_link/3"},
      {:basic_otp, {:guarded, [{:server, 1}]},
       "count/1 count_match/3 count_match/4 count_select/2 delete_meta/2 keys/2 lookup/2 " <>
         "match/3 match/4 meta/2 put_meta/3 register/3 select/2 unregister/2 " <>
         "unregister_match/3 unregister_match/4 update_value/3 values/3 dispatch/3 dispatch/4 " <>
         "__unregister__/3"},
      {:basic_otp, :allowed, "register_name/2 unregister_name/1 whereis_name/1 send/2"}
    ])
  end

  defp ets do
    entries([
      {:basic_otp, {:guarded, [:ets_new]}, "new/2"},
      {:basic_otp, :allowed,
       "all/0 match_spec_compile/1 match_spec_run/2 is_compiled_ms/1 fun2ms/1 test_ms/2 " <>
         "repair_continuation/2 whereis/1"},
      {:basic_otp, {:guarded, [{:ets, 1}]},
       "delete/1 delete/2 delete_all_objects/1 delete_object/2 first/1 foldl/3 foldr/3 " <>
         "give_away/3 info/1 info/2 insert/2 insert_new/2 last/1 lookup/2 lookup_element/3 " <>
         "match/2 match/3 match_delete/2 match_object/2 match_object/3 " <>
         "member/2 next/2 prev/2 rename/2 safe_fixtable/2 select/2 select/3 select_count/2 " <>
         "select_delete/2 select_replace/2 select_reverse/2 select_reverse/3 setopts/2 slot/2 " <>
         "tab2list/1 take/2 update_counter/3 update_counter/4 update_element/3 " <>
         "to_dets/2 from_dets/2 init_table/2 table/1 table/2"},
      {:basic_otp, :allowed, "match/1 match_object/1 select/1 select_reverse/1"},
      {:file_write, :forbidden, "tab2file/2 tab2file/3"},
      {:file_read, :forbidden, "file2tab/1 file2tab/2 tabfile_info/1"},
      {:basic_otp, :allowed, "i/0 i/1"}
    ])
  end

  defp system do
    entries([
      {:basic_otp, :allowed,
       "build_info/0 compiled_endianness/0 convert_time_unit/3 endianness/0 monotonic_time/0 " <>
         "monotonic_time/1 os_time/0 os_time/1 otp_release/0 pid/0 get_pid/0 schedulers/0 " <>
         "schedulers_online/0 stacktrace/0 system_time/0 system_time/1 time_offset/0 " <>
         "time_offset/1 unique_integer/0 unique_integer/1 version/0"},
      {:file_read, :allowed,
       "fetch_env/1 fetch_env!/1 get_env/0 get_env/1 get_env/2 cwd/0 cwd!/0 tmp_dir/0 " <>
         "tmp_dir!/0 user_home/0 user_home!/0 find_executable/1 argv/0"},
      {:all, :forbidden,
       "argv/1 at_exit/1 cmd/2 cmd/3 delete_env/1 halt/0 halt/1 no_halt/0 no_halt/1 put_env/1 " <>
         "put_env/2 restart/0 shell/1 shell/2 stop/0 stop/1 trap_signal/2 trap_signal/3 " <>
         "untrap_signal/2"}
    ])
  end

  defp file_ex do
    entries([
      {:file_read, :allowed,
       "dir?/1 dir?/2 exists?/1 exists?/2 ls/0 ls/1 ls!/0 ls!/1 lstat/1 lstat/2 lstat!/1 " <>
         "lstat!/2 read/1 read!/1 read_link/1 read_link!/1 regular?/1 regular?/2 stat/1 " <>
         "stat/2 stat!/1 stat!/2 cwd/0 cwd!/0"},
      {:file_read, {:guarded, [{:open, 2}]}, "open/2 open/3 open!/2 open!/3 stream!/2 stream!/3"},
      {:file_read, :allowed, "open/1 open!/1 stream!/1 close/1"},
      {:file_write, {:guarded, [{:write, 2}]}, "write/2 write/3 write!/2 write!/3"},
      {:file_write, :allowed,
       "chgrp/2 chgrp!/2 chmod/2 chmod!/2 chown/2 chown!/2 copy/2 copy/3 copy!/2 copy!/3 " <>
         "cp/2 cp/3 cp!/2 cp!/3 cp_r/2 cp_r/3 cp_r!/2 cp_r!/3 ln/2 ln!/2 ln_s/2 ln_s!/2 " <>
         "mkdir/1 mkdir!/1 mkdir_p/1 mkdir_p!/1 rename/2 rename!/2 rm/1 rm!/1 rm_rf/1 " <>
         "rm_rf!/1 rmdir/1 rmdir!/1 touch/1 touch/2 touch!/1 touch!/2 write_stat/2 " <>
         "write_stat/3 write_stat!/2 write_stat!/3"},
      {:all, :forbidden, "cd/1 cd!/1 cd!/2"}
    ])
  end

  defp file_erl do
    entries([
      {:file_read, :allowed,
       "read_file/1 read_file_info/1 read_file_info/2 read_link/1 read_link_all/1 " <>
         "read_link_info/1 read_link_info/2 list_dir/1 list_dir_all/1 get_cwd/0 get_cwd/1 " <>
         "consult/1 path_consult/2 read/2 read_line/1 pread/2 pread/3 position/2 close/1 " <>
         "native_name_encoding/0 format_error/1 advise/4"},
      {:file_read, {:guarded, [{:open, 2}]}, "open/2"},
      {:file_write, {:guarded, [{:write, 2}]}, "write_file/2 write_file/3 write/2"},
      {:file_write, :allowed,
       "make_dir/1 del_dir/1 del_dir_r/1 delete/1 delete/2 rename/2 copy/2 copy/3 " <>
         "make_link/2 make_symlink/2 write_file_info/2 write_file_info/3 change_mode/2 " <>
         "change_owner/2 change_owner/3 change_group/2 change_time/2 change_time/3 truncate/1 " <>
         "sync/1 datasync/1 pwrite/2 pwrite/3 allocate/3"},
      {:all, :forbidden,
       "set_cwd/1 eval/1 eval/2 path_eval/2 path_eval/3 script/1 script/2 path_script/2 " <>
         "path_script/3 path_open/3 sendfile/2 sendfile/5"}
    ])
  end

  defp logger_ex do
    entries([
      {:basic_otp, :allowed,
       "__do_log__/4 __should_log__/2 bare_log/2 bare_log/3 compare_levels/2 enabled?/1 " <>
         "get_module_level/1 get_process_level/1 level/0 metadata/0 metadata/1 " <>
         "reset_metadata/0 reset_metadata/1 put_process_level/2 delete_process_level/1 " <>
         "enable/1 disable/1"},
      {:all, :forbidden,
       "add_backend/1 add_backend/2 add_translator/1 configure/1 configure_backend/2 " <>
         "delete_all_module_levels/0 delete_application_level/1 delete_module_level/1 flush/0 " <>
         "put_application_level/2 put_module_level/2 remove_backend/1 remove_backend/2 " <>
         "remove_translator/1"}
    ])
  end

  defp logger_erl do
    entries([
      {:basic_otp, :allowed,
       "macro_log/3 macro_log/4 macro_log/5 allow/2 log/2 log/3 log/4 emergency/1 emergency/2 " <>
         "emergency/3 alert/1 alert/2 alert/3 critical/1 critical/2 critical/3 error/1 error/2 " <>
         "error/3 warning/1 warning/2 warning/3 notice/1 notice/2 notice/3 info/1 info/2 " <>
         "info/3 debug/1 debug/2 debug/3 set_process_metadata/1 update_process_metadata/1 " <>
         "get_process_metadata/0 unset_process_metadata/0 timestamp/0 compare_levels/2 " <>
         "get_primary_config/0 get_config/0 get_module_level/0 get_module_level/1 " <>
         "i/0 i/1 format_report/1 add_handlers/1"},
      {:all, :forbidden,
       "set_primary_config/1 set_primary_config/2 update_primary_config/1 add_handler/3 " <>
         "remove_handler/1 set_handler_config/2 set_handler_config/3 update_handler_config/2 " <>
         "update_handler_config/3 update_formatter_config/2 update_formatter_config/3 " <>
         "set_module_level/2 unset_module_level/0 unset_module_level/1 set_application_level/2 " <>
         "unset_application_level/1 add_primary_filter/2 remove_primary_filter/1 " <>
         "add_handler_filter/3 remove_handler_filter/2 reconfigure/0 set_proxy_config/1 " <>
         "get_proxy_config/0 get_handler_config/0 get_handler_config/1 get_handler_ids/0"}
    ])
  end

  defp code_ex do
    entries([
      {:code_load, {:guarded, [:code_load]},
       "compile_string/1 compile_string/2 compile_quoted/1 compile_quoted/2"},
      {:basic_otp, {:guarded, [{:map_module, 1}]},
       "ensure_loaded/1 ensure_loaded!/1 ensure_loaded?/1 ensure_compiled/1 ensure_compiled!/1 " <>
         "ensure_compiled?/1 fetch_docs/1 get_docs/2"},
      {:basic_otp, :allowed,
       "can_await_module_compilation?/0 " <>
         "string_to_quoted/1 string_to_quoted/2 string_to_quoted!/1 string_to_quoted!/2 " <>
         "string_to_quoted_with_comments/1 string_to_quoted_with_comments/2 " <>
         "string_to_quoted_with_comments!/1 string_to_quoted_with_comments!/2 " <>
         "quoted_to_algebra/1 quoted_to_algebra/2 format_string!/1 format_string!/2 " <>
         "cursor_context/1 cursor_context/2 available_compiler_options/0 compiler_options/0 " <>
         "get_compiler_option/1 env_for_eval/1 loaded_files/0 required_files/0"}
    ])
  end

  defp code_erl do
    entries([
      {:code_load, {:guarded, [:code_load]}, "load_binary/3"},
      {:basic_otp, {:guarded, [{:map_module, 1}]}, "ensure_loaded/1 is_loaded/1 which/1"},
      {:basic_otp, :allowed,
       "priv_dir/1 lib_dir/1 lib_dir/2 root_dir/0 " <>
         "is_sticky/1 get_object_code/1 module_status/1 modified_modules/0 all_loaded/0 " <>
         "all_available/0 get_mode/0 get_doc/1 objfile_extension/0 " <>
         "where_is_file/1 where_is_file/2 is_module_native/1 ensure_modules_loaded/1"}
    ])
  end

  defp node_ex do
    entries([
      {:basic_otp, :allowed, "alive?/0 self/0 list/0 list/1"},
      {:all, :forbidden,
       "connect/1 disconnect/1 get_cookie/0 monitor/2 monitor/3 ping/1 set_cookie/1 " <>
         "set_cookie/2 spawn/2 spawn/3 spawn/4 spawn/5 spawn_link/2 spawn_link/4 " <>
         "spawn_monitor/2 spawn_monitor/4 start/1 start/2 start/3 stop/0"}
    ])
  end

  defp sys do
    entries([
      {:basic_otp, {:guarded, [{:member, 1}]},
       "get_state/1 get_state/2 replace_state/2 replace_state/3 get_status/1 get_status/2 " <>
         "suspend/1 suspend/2 resume/1 resume/2 change_code/4 change_code/5 terminate/2 " <>
         "terminate/3 statistics/2 statistics/3 trace/2 trace/3 log/2 log/3 log_to_file/2 " <>
         "log_to_file/3 no_debug/1 no_debug/2 install/2 install/3 remove/2 remove/3"},
      {:basic_otp, :allowed,
       "debug_options/1 get_debug/3 handle_debug/4 handle_system_msg/6 handle_system_msg/7 " <>
         "print_log/1 suspend_loop_hib/6"}
    ])
  end

  defp net do
    %{
      :gen_tcp =>
        entries([
          {:network_client, :allowed,
           "connect/2 connect/3 connect/4 send/2 recv/2 recv/3 close/1 shutdown/2 " <>
             "controlling_process/2"},
          {:all, :forbidden, "listen/2 accept/1 accept/2"}
        ]),
      :inet =>
        entries([
          {:network_client, :allowed,
           "getaddr/2 getaddr/3 getaddrs/2 getaddrs/3 gethostbyname/1 gethostbyname/2 " <>
             "gethostbyname/3 parse_address/1 parse_ipv4_address/1 parse_ipv6_address/1 " <>
             "ntoa/1 setopts/2 getopts/2 peername/1 sockname/1 port/1 close/1 format_error/1"}
        ]),
      :ssl =>
        entries([
          {:network_client, :allowed,
           "connect/2 connect/3 connect/4 send/2 recv/2 recv/3 close/1 setopts/2 " <>
             "controlling_process/2 handshake/1 handshake/2 handshake/3"},
          {:all, :forbidden, "listen/2 transport_accept/1 transport_accept/2"}
        ])
    }
  end

  defp task_supervisor do
    entries([
      {:basic_otp, {:guarded, [{:server, 1}, :spawn, {:fun, 2}]},
       "async/2 async/3 async_nolink/2 async_nolink/3 start_child/2 start_child/3"},
      {:basic_otp, {:guarded, [{:server, 1}, :spawn, {:mfa, 2, 3, 4}]},
       "async/4 async/5 async_nolink/4 async_nolink/5 start_child/4 start_child/5"},
      {:basic_otp, {:guarded, [{:server, 1}, :spawn, {:fun, 3}]},
       "async_stream/3 async_stream/4 async_stream_nolink/3 async_stream_nolink/4"},
      {:basic_otp, {:guarded, [{:server, 1}, :spawn, {:mfa, 3, 4, 5}]},
       "async_stream/5 async_stream/6 async_stream_nolink/5 async_stream_nolink/6"},
      {:basic_otp, {:guarded, [{:server, 1}]}, "children/1 terminate_child/2"},
      {:basic_otp, :allowed, "child_spec/1 init/1 start_link/0 start_link/1"}
    ])
  end

  defp os do
    entries([
      {:basic_otp, :allowed,
       "getpid/0 perf_counter/0 perf_counter/1 system_time/0 system_time/1 timestamp/0 " <>
         "type/0 version/0"},
      {:file_read, :allowed,
       "getenv/0 getenv/1 getenv/2 env/0 find_executable/1 find_executable/2"},
      {:all, :forbidden, "cmd/1 cmd/2 putenv/2 unsetenv/1 set_signal/2"}
    ])
  end

  defp proc_lib do
    entries([
      {:basic_otp, {:guarded, [:spawn, {:fun, 1}]}, "spawn/1 spawn_link/1 spawn_opt/2"},
      {:basic_otp, {:guarded, [:spawn, {:mfa, 1, 2, 3}]},
       "spawn/3 spawn_link/3 spawn_opt/4 start/3 start/4 start/5 start_link/3 start_link/4 " <>
         "start_link/5 start_monitor/3 start_monitor/4 start_monitor/5"},
      {:basic_otp, :allowed,
       "format/1 format/2 format/3 hibernate/3 init_ack/1 init_ack/2 initial_call/1 " <>
         "translate_initial_call/1 report_cb/2"},
      {:basic_otp, {:guarded, [{:member, 1}]}, "stop/1 stop/3"},
      {:all, :forbidden,
       "spawn/2 spawn/4 spawn_link/2 spawn_link/4 spawn_opt/3 spawn_opt/5 init_p/3 init_p/5 " <>
         "wake_up/3"}
    ])
  end

  defp gen_statem do
    entries([
      {:basic_otp, {:guarded, [{:module, 1}]}, "start/3 start_link/3 start_monitor/3"},
      {:basic_otp, {:guarded, [{:module, 2}]}, "start/4 start_link/4 start_monitor/4"},
      {:basic_otp, {:guarded, [{:server, 1}]},
       "call/2 call/3 cast/2 stop/1 stop/3 send_request/2 send_request/4"},
      {:basic_otp, :allowed,
       "reply/1 reply/2 check_response/2 check_response/3 receive_response/1 " <>
         "receive_response/2 receive_response/3 wait_response/1 wait_response/2 " <>
         "wait_response/3 reqids_add/3 reqids_new/0 reqids_size/1 reqids_to_list/1 " <>
         "enter_loop/4 enter_loop/5 enter_loop/6 format_log/1 format_log/2 format_status/2 " <>
         "behaviour_info/1"},
      {:all, :forbidden,
       "init_it/6 system_code_change/4 system_continue/3 system_get_state/1 " <>
         "system_replace_state/2 system_terminate/4 wakeup_from_hibernate/3"}
    ])
  end

  # The per-module tables: `module => {class, default_verdict, exceptions}`,
  # exceptions `%{{f, a} => {class, verdict}}`.
  def table do
    fun_by_fun = %{
      :erlang => erlang(),
      Process => process(),
      Kernel => kernel(),
      GenServer => gen_server(),
      :gen_server => erl_gen_server(),
      Supervisor => supervisor(),
      DynamicSupervisor => dynamic_supervisor(),
      Agent => agent(),
      Task => task(),
      Registry => registry(),
      :ets => ets(),
      System => system(),
      File => file_ex(),
      :file => file_erl(),
      Logger => logger_ex(),
      :logger => logger_erl(),
      Code => code_ex(),
      :code => code_erl(),
      # A run-time `defmodule` (a `defmodule` inside a function body).
      :elixir_module => entries([{:code_load, {:guarded, [:code_load]}, "compile/4"}]),
      Node => node_ex(),
      :sys => sys(),
      Task.Supervisor => task_supervisor(),
      :os => os(),
      :proc_lib => proc_lib(),
      :gen_statem => gen_statem()
    }

    forbidden_modules =
      for m <- [
            :init,
            :persistent_term,
            Port,
            :global,
            :rpc,
            :erpc,
            :net_kernel,
            :net_adm,
            :auth,
            :application_controller,
            :erl_ddll,
            :c,
            :shell,
            :peer,
            :slave,
            :dbg,
            :erl_eval
          ],
          into: %{},
          do: {m, {:all, :forbidden, %{}}}

    net = Map.new(net(), fn {m, t} -> {m, {:all, :forbidden, t}} end)

    whole()
    |> Map.merge(forbidden_modules)
    |> Map.merge(net)
    |> Map.merge(Map.new(fun_by_fun, fn {m, t} -> {m, {:all, :forbidden, t}} end))
  end
end

defmodule Sandbox.SecurityController.Operations do
  @moduledoc """
  The operation classes, as data: for every module of Elixir and OTP a
  sandbox may call, which class each exported function belongs to and
  whether a call is allowed, guarded (allowed with a run-time check of its
  arguments) or forbidden.

  A module is either listed whole — one class and verdict for every
  function it exports, with per-function exceptions — or function by
  function with `:forbidden` for everything not listed (`:erlang`,
  `Process`, `System`, ...). A module not listed at all is `:unclassified`:
  allowed only under a profile with `:all` (or named in a profile map's
  `allowed_modules`).

  Classes are the seed's: `:basic_otp`, `:math`, `:string`, `:file_read`,
  `:file_write`, `:network_client`, and `:all` for what only the `:all`
  operation set (the `:low` profile) may do: stop or reconfigure the VM,
  run OS commands, open ports, load code into the host, touch
  distribution, the host's `persistent_term`, logger configuration or
  system flags; plus `:code_load`, modules created at run time in the
  sandbox's own namespace (`Module.create/3`, a run-time `defmodule`,
  `Code.compile_string/1,2`, `Code.compile_quoted/1,2`,
  `:code.load_binary/3`: see `Sandbox.RuntimeCode`).

  `:code_load` calls are always guarded, whatever the profile: where the
  profile has the class (`:medium`, `:low`) the guard creates the module in
  the sandbox instead of the host; where it does not (`:high`) a module
  holding such a call still loads and only the call is refused at run time
  (`Sandbox.SecurityError`).

  A call's decision under a profile (`verdict/2`): if the function's class
  is among the profile's `allowed_operations` (or the profile has `:all`)
  the function's verdict stands — `:allowed`, or `{:guarded, checks}` —
  else it is `:forbidden`. Under `:all` nothing is guarded. The checks
  (`t:check/0`) are carried out by `Sandbox.Guard.Runtime`.
  """

  @type class ::
          :basic_otp
          | :math
          | :string
          | :file_read
          | :file_write
          | :network_client
          | :code_load
          | :all

  @typedoc """
  A run-time check of a guarded call (arguments are 1-based):

    * `{:member, n}` — argument `n` (a pid, port or registered name) is one
      of the sandbox's processes
    * `{:server, n}` — argument `n` is a server: a pid, or a name a process
      of the sandbox registered (not `{:global, _}`, `{:via, _, _}` or a
      remote `{name, node}`)
    * `:send` — the destination (argument 1): a pid, or a name registered
      by a process of the sandbox
    * `{:mfa, m, f, a}` — arguments `m`, `f`, `a` are a module, function and
      argument list that will be applied: the module is mapped to the
      sandbox's copy and the call checked like a static one
    * `{:fun, n}` — argument `n` is a fun that will be called: an external
      fun is checked like a static call
    * `{:module, n}` — argument `n` is a callback module: mapped to the
      sandbox's copy, and must be one of its modules or an allowed one
    * `{:child_spec, n}` — argument `n` is a child spec (or a list of them)
      whose start MFA is checked
    * `{:ets, n}` — argument `n` is a table owned by a process of the sandbox
    * `:ets_new` — the options of a new table name no heir outside the sandbox
    * `:new_atom` — the atom the call creates (argument 1) counts against the
      sandbox's atom budget
    * `:binary_to_term` — the term holds no fun outside the sandbox, and its
      new atoms count against the budget
    * `{:write, n}` — the data of a file write (argument `n`) is within
      `max_file_size`
    * `{:open, n}` — file open modes (argument `n`) write only under
      `:file_write`
    * `:group_leader` — a group leader is set only for the sandbox's
      processes, to one of the sandbox's group leaders
    * `:spawn` — process admission (the sandbox's `max_processes`)
    * `:make_fun` — `:erlang.make_fun(m, f, a)`, `Function.capture/3`: the
      module is mapped to the sandbox's copy, and the fun checked like a
      static call (a guarded target gives a closure that makes the guarded
      call); a fun of a function not exported yet is charged to the export
      table (`Sandbox.ExportTable`), `SystemLimitError` when it is full
    * `{:map_module, n}` — argument `n`, a module, is mapped to the sandbox's
      copy (`struct/2`, `function_exported?/3`, `Code.ensure_loaded/1`): no
      restriction, isolation fidelity
    * `:code_load` — the call is not made: the module it would create is
      compiled in a compile worker and loaded into the sandbox's namespace
      (`Sandbox.RuntimeCode`)
  """
  @type check ::
          {:member, pos_integer}
          | {:server, pos_integer}
          | :send
          | {:mfa, pos_integer, pos_integer, pos_integer}
          | {:fun, pos_integer}
          | {:module, pos_integer}
          | {:child_spec, pos_integer}
          | {:ets, pos_integer}
          | :ets_new
          | :new_atom
          | :binary_to_term
          | {:write, pos_integer}
          | {:open, pos_integer}
          | :group_leader
          | :spawn
          | :make_fun
          | {:map_module, pos_integer}
          | :code_load

  @type verdict :: :allowed | {:guarded, [check]} | :forbidden

  @table Sandbox.SecurityController.Operations.Tables.table()

  @doc false
  def table, do: @table

  @doc "The modules the tables name."
  @spec modules() :: [module]
  def modules, do: Map.keys(@table)

  @doc """
  The class and verdict of `{m, f, a}` before any profile: `{class,
  verdict}`, or `{:unclassified, :forbidden}` for a module the tables do not
  name.
  """
  @spec classify(mfa) :: {class | :unclassified, verdict}
  def classify({m, f, a}) do
    case @table do
      %{^m => {class, default, exceptions}} -> Map.get(exceptions, {f, a}, {class, default})
      _ -> {:unclassified, :forbidden}
    end
  end
end
