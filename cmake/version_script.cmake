# cmake -DHEADER=include/nlsr.h -DOUT=nlsr.map -P version_script.cmake
# Writes the linker version script of libnlsr.so: every nlsr_* function that HEADER declares is
# global, everything else local. Declarations are found after removing comments and
# preprocessor lines, as a name followed by '(' (macros are upper case, types are never
# followed by '(').
file(READ "${HEADER}" text)
# Block comments, then line comments, then preprocessor lines (with their continuations).
string(REGEX REPLACE "/\\*([^*]|\\*+[^*/])*\\*+/" " " text "${text}")
string(REGEX REPLACE "//[^\n]*" "" text "${text}")
string(REGEX REPLACE "\\\\\n" " " text "${text}")
string(REGEX REPLACE "(^|\n)[ \t]*#[^\n]*" "\n" text "${text}")
string(REGEX MATCHALL "nlsr_[a-z0-9_]+[ \t\n]*\\(" calls "${text}")
set(names "")
foreach(c IN LISTS calls)
  string(REGEX REPLACE "[ \t\n]*\\($" "" n "${c}")
  list(APPEND names ${n})
endforeach()
list(REMOVE_DUPLICATES names)
list(SORT names)
list(LENGTH names count)
if(count EQUAL 0)
  message(FATAL_ERROR "${HEADER}: no nlsr_* function declarations found")
endif()
set(map "/* Generated from ${HEADER} by cmake/version_script.cmake. */\n{\n  global:\n")
foreach(n IN LISTS names)
  string(APPEND map "    ${n};\n")
endforeach()
string(APPEND map "  local:\n    *;\n};\n")
# Rewritten only when it changes, so that the library is relinked only then.
file(WRITE "${OUT}.tmp" "${map}")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUT}.tmp" "${OUT}")
file(REMOVE "${OUT}.tmp")
